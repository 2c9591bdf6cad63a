"""Read PyTorch checkpoints that hold objects besides tensors, without running any code from the file.

``torch.load(weights_only=True)`` refuses the files that training scripts such as VMamba's save:
beside the tensors they hold a yacs ``CfgNode`` (a dict subclass, which the weights-only loader
cannot build even when allowed) and other objects of classes that need not be installed here.
:func:`load_checkpoint` reads them with ``torch.load`` (its zip and storage handling) and
:class:`InertUnpickler`, which decides what every global of the pickle becomes:

* the callables in :func:`allowed_calls` (torch's tensor rebuilders, ``OrderedDict``, ``set``,
  ``frozenset`` and ``_codecs.encode``, which protocol 2 uses for bytes) are the real ones;
* any other global becomes a stand-in class that is never imported: building an object of it
  (``NEWOBJ``, how pickle stores a plain object) gives an :class:`InertObject` that holds the
  object's data (items, list items, state) and nothing else, while *calling* it (``REDUCE``, how
  a payload runs ``os.system``) raises :class:`ForbiddenCallError` naming it, before any call.

So the only code that runs is torch's, the builtins' above and this module's.
"""

from __future__ import annotations

import functools
import os
import pickle
import types
from collections import OrderedDict
from typing import Any, ClassVar


class ForbiddenCallError(pickle.UnpicklingError):
    """The pickle asked to call a global outside :func:`allowed_calls`; nothing was called."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _InertType(type):
    """The metaclass of the stand-ins: calling one (``REDUCE``) is refused; ``NEWOBJ`` calls
    ``__new__`` directly and so builds an inert object."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise ForbiddenCallError(cls.inert_name)


class InertObject(dict, metaclass=_InertType):
    """An object of a class the file names but that was not imported: its data only.

    The items of a dict subclass (a yacs ``CfgNode`` keeps its config there) are its own items;
    ``args`` are the arguments pickle passed to ``__new__``, ``state`` what it passed to
    ``__setstate__`` (None when nothing) and ``list_items`` what a list subclass held.
    """

    inert_name: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = super().__new__(cls)
        obj.args, obj.state, obj.list_items = args, None, []
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.list_items.append(item)

    def extend(self, items: Any) -> None:
        self.list_items.extend(items)

    def __repr__(self) -> str:
        return f"<inert {self.inert_name} {dict.__repr__(self)}>"


@functools.cache
def allowed_calls() -> dict[tuple[str, str], Any]:
    """``(module, name) -> callable`` of the globals a checkpoint may call (imports torch)."""
    import codecs

    import torch

    calls: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("builtins", "__builtin__"):  # protocol 2 names the builtins module as Python 2 did
        calls[(module, "set")] = set
        calls[(module, "frozenset")] = frozenset
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter"):
        calls[("torch._utils", name)] = getattr(torch._utils, name)
    return calls


class InertUnpickler(pickle.Unpickler):
    """A restricted unpickler: the globals of :func:`allowed_calls` are real, all others inert stand-ins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = allowed_calls().get((module, name))
        if found is not None:
            return found
        full = f"{module}.{name}"
        if full not in self._stand_ins:
            self._stand_ins[full] = _InertType(name, (InertObject,), {"inert_name": full, "__module__": __name__})
        return self._stand_ins[full]


def _load(file: Any, **kwargs: Any) -> Any:
    return InertUnpickler(file, **kwargs).load()


# What torch.load needs of a pickle module: its name, Unpickler (subclassed for storages) and load.
PICKLE_MODULE = types.SimpleNamespace(__name__=__name__, Unpickler=InertUnpickler, load=_load)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """The object a ``torch.save``'d file holds, tensors on the CPU, objects of other classes as
    :class:`InertObject`; :class:`ForbiddenCallError` when the pickle asks to call anything else."""
    import torch

    # weights_only=False only lets torch use PICKLE_MODULE: the restricted unpickler above decides
    # every global, so nothing is imported or run that allowed_calls() does not name.
    return torch.load(os.fspath(path), map_location="cpu", weights_only=False, pickle_module=PICKLE_MODULE)
