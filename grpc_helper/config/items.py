"""Config items and holders."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable
from typing import TypeAlias

from grpc_helper.api import ConfigItem, ConfigValidator, ResultCode
from grpc_helper.errors import RpcException

CustomValidator = Callable[[str, str], None]
CONFIG_NAME_RE = re.compile(r"[a-z][a-z0-9-]*")  # what a config item name looks like


def _check_int(name: str, value: str, *, positive: bool) -> None:
    try:
        v = int(value)
    except ValueError:
        raise RpcException(
            f"Invalid value for {name}: {value!r} is not an integer", ResultCode.ERROR_PARAM_INVALID
        ) from None
    if positive and v <= 0:
        raise RpcException(
            f"Invalid value for {name}: {value!r} is not a positive integer", ResultCode.ERROR_PARAM_INVALID
        )


def _check_float(name: str, value: str, *, positive: bool) -> None:
    try:
        v = float(value)
    except ValueError:
        raise RpcException(
            f"Invalid value for {name}: {value!r} is not a number", ResultCode.ERROR_PARAM_INVALID
        ) from None
    if not math.isfinite(v):
        raise RpcException(
            f"Invalid value for {name}: {value!r} is not a finite number", ResultCode.ERROR_PARAM_INVALID
        )
    if positive and v <= 0:
        raise RpcException(
            f"Invalid value for {name}: {value!r} is not a positive number", ResultCode.ERROR_PARAM_INVALID
        )


_BUILTIN: dict[int, Callable[[str, str], None]] = {
    ConfigValidator.CONFIG_VALID_STRING: lambda _name, _value: None,
    ConfigValidator.CONFIG_VALID_INT: lambda name, value: _check_int(name, value, positive=False),
    ConfigValidator.CONFIG_VALID_POS_INT: lambda name, value: _check_int(name, value, positive=True),
    ConfigValidator.CONFIG_VALID_FLOAT: lambda name, value: _check_float(name, value, positive=False),
    ConfigValidator.CONFIG_VALID_POS_FLOAT: lambda name, value: _check_float(name, value, positive=True),
}


def builtin_validator(validator: int) -> Callable[[str, str], None] | None:
    """The check of a built-in `ConfigValidator` (None for CONFIG_VALID_CUSTOM or a value unknown here)."""
    return _BUILTIN.get(validator)


def check_value(name: str, value: str, validator: Callable[[str, str], None] | None, *, can_be_empty: bool) -> None:
    """The one place deciding the codes of a refused value, wherever it comes from (layer, file, service, proxy).

    Empty where not allowed: ERROR_PARAM_MISSING; rejected by `validator`: ERROR_PARAM_INVALID (a custom
    validator's own `RpcException` passes through). A None `validator` only checks emptiness.
    """
    if value == "":
        if can_be_empty:
            return
        raise RpcException(f"Empty value not allowed for {name}", ResultCode.ERROR_PARAM_MISSING)
    if validator is None:
        return
    try:
        validator(name, value)
    except RpcException:
        raise
    except Exception as exc:  # a custom validator that raised something else
        raise RpcException(f"Invalid value for {name}: {value!r} ({exc})", ResultCode.ERROR_PARAM_INVALID) from exc


class Config:
    """A configuration item: a named string value with a validator and a default.

    Values are process-wide: the same `Config` object is read wherever it is used, so
    `item.update("1")` takes effect at once.
    """

    def __init__(
        self,
        name: str,
        description: str = "",
        default_value: str = "",
        *,  # 2.x takes these by keyword only (its Config takes keyword arguments only)
        can_be_empty: bool = False,
        validator: int = ConfigValidator.CONFIG_VALID_STRING,
        custom_validator: CustomValidator | None = None,
    ) -> None:
        if not isinstance(name, str) or CONFIG_NAME_RE.fullmatch(name) is None:
            raise RpcException(
                f"Invalid config item name: {name!r} (expected [a-z][a-z0-9-]*)", ResultCode.ERROR_PARAM_INVALID
            )
        if validator == ConfigValidator.CONFIG_VALID_CUSTOM:
            if custom_validator is None:
                raise RpcException(f"Missing custom validator for config item {name}", ResultCode.ERROR_PARAM_MISSING)
            self._validator: Callable[[str, str], None] = custom_validator
        elif validator in _BUILTIN:
            self._validator = _BUILTIN[validator]
        else:
            raise RpcException(f"Unknown validator {validator} for config item {name}", ResultCode.ERROR_PARAM_INVALID)
        self.item = ConfigItem(
            name=name,
            description=description,
            value=default_value,
            default_value=default_value,
            can_be_empty=can_be_empty,
            validator=validator,  # type: ignore[arg-type]  # an int: one of ConfigValidator's (checked above)
        )
        self.hard_coded_default = default_value  # the constructor's value, before any layer
        self._lock = threading.Lock()

    # --- values ---
    @property
    def name(self) -> str:
        return self.item.name

    @property
    def default_value(self) -> str:
        return self.item.default_value

    @property
    def str_val(self) -> str:
        return self.item.value

    @property
    def int_val(self) -> int:
        return int(self.item.value)

    @property
    def float_val(self) -> float:
        return float(self.item.value)

    # --- validation and updates ---
    def validate(self, name: str, value: str) -> None:
        """Raise `RpcException` if `value` is not acceptable: ERROR_PARAM_MISSING if empty, else ERROR_PARAM_INVALID."""
        check_value(name, value, self._validator, can_be_empty=self.item.can_be_empty)

    def update(self, value: str) -> None:
        """Validate, then set the current value."""
        self.validate(self.name, value)
        with self._lock:
            self.item.value = value

    def reset(self) -> None:
        """Back to the default value."""
        with self._lock:
            self.item.value = self.item.default_value

    def set_default(self, value: str) -> None:
        """Set a new default (from a config layer) and make it the current value. Validated by the caller."""
        with self._lock:
            self.item.default_value = value
            self.item.value = value

    def snapshot(self) -> ConfigItem:
        """A copy of the item message, safe to hand out."""
        with self._lock:
            out = ConfigItem()
            out.CopyFrom(self.item)
            return out

    def __repr__(self) -> str:
        return f"Config({self.name}={self.str_val!r})"


class ConfigHolder:
    """Base for classes grouping `Config` items as class attributes; pass the class to RpcServer."""

    @classmethod
    def config_items(cls) -> list[Config]:
        seen: dict[str, Config] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                if isinstance(value, Config):
                    seen[value.name] = value
        return list(seen.values())


# What servers and config managers take as items: `Config` objects, `ConfigHolder` classes (or instances)
ConfigItems: TypeAlias = "Iterable[Config | type[ConfigHolder] | ConfigHolder]"


def flatten_items(items: ConfigItems | None) -> list[Config]:
    """Expand `Config` objects and `ConfigHolder` classes (or instances) into a list of items."""
    out: list[Config] = []
    for entry in items or []:
        if isinstance(entry, Config):
            out.append(entry)
        elif (isinstance(entry, type) and issubclass(entry, ConfigHolder)) or isinstance(entry, ConfigHolder):
            out.extend(entry.config_items())
        else:
            raise RpcException(
                f"Invalid config item {entry!r}: expected Config or ConfigHolder", ResultCode.ERROR_MODEL_INVALID
            )
    return out
