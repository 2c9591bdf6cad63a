"""Write the example images of the README: synthetic scenes with phrases that name one object.

    python examples/make_examples.py            # rewrites examples/*.png and examples/examples.json

The scenes come from the ``shapes`` generator with seed 2024, which no shipped model was
trained on; each image gets one phrase per expression type it has, with the exact mask of
the object the phrase names (COCO RLE) so that predictions can be checked.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from remamber.data.masks import encode_mask
from remamber.data.shapes import generate_image
from remamber.utils.io import write_json

SEED = 2024
IMAGES = 4
HERE = Path(__file__).resolve().parent


def main() -> None:
    examples = []
    for index in range(IMAGES):
        gen = generate_image(SEED, "test", index)
        name = f"shapes-{index + 1}.png"
        Image.fromarray(gen.image).save(HERE / name)
        seen: set[str] = set()
        for target, exprs in gen.refs:
            for expr, text in exprs:
                if expr.type in seen:
                    continue
                seen.add(expr.type)
                examples.append(
                    {
                        "image": name,
                        "text": text,
                        "expr_type": expr.type,
                        "mask": encode_mask(gen.labels == target + 1),
                    }
                )
    write_json(HERE / "examples.json", examples, indent=1)
    print(json.dumps([(e["image"], e["expr_type"], e["text"]) for e in examples], indent=1))


if __name__ == "__main__":
    main()
