"""Data: REFER datasets (RefCOCO, RefCOCO+, RefCOCOg), the synthetic ``shapes`` set, loading.

Modules (import them directly; this package imports nothing heavy):

* :mod:`remamber.data.refer` -- REFER reader with a restricted unpickler;
* :mod:`remamber.data.masks` -- polygons / RLE to COCO RLE, through pycocotools;
* :mod:`remamber.data.prepare` -- conversion to the prepared form (``prepare_refer``);
* :mod:`remamber.data.manifest` -- the prepared form: ``dataset.json`` + JSON-lines manifests;
* :mod:`remamber.data.expressions` -- structured referring expressions and their resolver;
* :mod:`remamber.data.shapes` -- the synthetic generator (``prepare_shapes``);
* :mod:`remamber.data.transforms`, :mod:`remamber.data.dataset` -- torch loading
  (``ReferringDataset``, ``collate_fn``).
"""
