"""``remamber serve``: the model behind an HTTP API and a page, with batched inference."""
