"""Base of the frozen, typed parameter dataclasses that travel into stores, manifests and checkpoints.

Every parameter set is a ``@dataclass(frozen=True)`` subclassing :class:`Params`; it validates itself in
``__post_init__`` and round-trips through plain JSON-able dicts with :meth:`Params.to_dict` and
:meth:`Params.from_dict`, so the same dict can be written into a Zarr attribute, an HDF5 attribute, a JSON
manifest and a torch checkpoint (``weights_only=True`` loads plain dicts).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any, TypeVar

from brainprep.errors import ConfigError

P = TypeVar("P", bound="Params")


class _FieldTypeError(ConfigError):
    """A value of another type than its field's; :meth:`Params.from_dict` puts the field's name first."""


def _to_plain(value: Any) -> Any:
    if isinstance(value, Params):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


def _check_type(annotation: Any, value: Any) -> None:
    """Refuse a JSON value of another type than a scalar, tuple or nested-params field's (other fields are
    not checked). An int passes for a float (a hand-written ``0``); a bool passes for neither."""
    origin = typing.get_origin(annotation)
    if annotation in (int, float):
        ok = isinstance(value, int | float if annotation is float else int) and not isinstance(value, bool)
        expected = annotation.__name__
    elif annotation in (bool, str):
        ok, expected = isinstance(value, annotation), annotation.__name__
    elif origin is tuple:
        ok, expected = isinstance(value, list | tuple), "a list"
    elif isinstance(annotation, type) and issubclass(annotation, Params):
        ok, expected = isinstance(value, dict), f"an object of {annotation.__name__}"
    else:
        return
    if not ok:
        raise _FieldTypeError(f"expected {expected}, found {'null' if value is None else repr(value)}")


def _from_plain(annotation: Any, value: Any) -> Any:
    """Turn a JSON value back into the annotated field type (nested Params, tuples).

    Raises:
        ConfigError: a value of another type than its field's (``"x"`` for an int, a number for a list,
            ``null`` for a field that cannot be ``None``).
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if value is None or len(args) != 1:
            return value  # None where it may be, or a union of types: read as it is
        return _from_plain(args[0], value)
    _check_type(annotation, value)
    if value is None:
        return None
    if isinstance(annotation, type) and issubclass(annotation, Params):
        return annotation.from_dict(value)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in value)
        return tuple(_from_plain(a, v) for a, v in zip(args, value, strict=False))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation(value)
    return value


class Params:
    """Mixin for frozen parameter dataclasses: dict/JSON round trip with strict key checking."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types (tuples become lists, nested params become dicts)."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[P], data: dict[str, Any]) -> P:
        """Inverse of :meth:`to_dict`. Unknown keys are an error; missing keys take defaults: the field's
        own default, so a nested block's missing keys come from that default instance (an
        ``AugmentConfig``'s ``gamma_inverted`` given without ``invert`` stays inverted), not its class's."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no parameter(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            default = fields[name].default
            if isinstance(default, Params) and isinstance(value, dict):
                value = {**default.to_dict(), **value}
            try:
                kwargs[name] = _from_plain(hints[name], value)
            except _FieldTypeError as error:
                raise _FieldTypeError(f"{cls.__name__}.{name}: {error}") from None
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self: P, **changes: Any) -> P:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def differences(mine: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """The fields where two :meth:`Params.to_dict` dicts differ, nested names dotted:
    ``["standardize.method: volume-nonzero against patch-slice"]`` (``mine`` first); ``-`` for a missing
    field."""
    found = []
    for key in sorted(set(mine) | set(theirs), key=str):
        a, b = mine.get(key, "-"), theirs.get(key, "-")
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {json.dumps(a)} against {json.dumps(b)}")
    return found
