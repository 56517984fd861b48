"""A value that does not show itself: secrets travel through the code wrapped in `Secret`."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Secret(Generic[T]):
    """A value that does not show itself: repr and str are `Secret('***')`."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(repr(self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")
