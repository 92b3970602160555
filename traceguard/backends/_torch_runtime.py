"""The in-process torch runtime shared by the local backend and the HoliSafe guard head.

Both load a transformers checkpoint on first use, share it between threads behind one lock (a
PyTorch model is not safe to drive from two threads at once), batch with left padding, and stop
generation on the same end-of-sequence and pad ids. That much is written once here:

- :func:`require_torch` and :func:`check_dtype` check an install and an option up front;
- :class:`Lazy` loads once, shares the result, and serialises callers on its lock;
- :meth:`LoadedModel.ready` finishes a freshly loaded model (eval mode, left padding, stop ids),
  and runtimes that need more subclass it.

torch and transformers are imported by the loaders, never here: importing this module stays light.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from traceguard._exceptions import AuditorError, ConfigurationError
from traceguard._version import install_hint

__all__ = [
    "DTYPES",
    "Lazy",
    "LoadedModel",
    "as_auditor_error",
    "check_dtype",
    "require_torch",
    "torch_dtype",
]

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
"""The ``dtype`` option's spellings, besides ``"auto"``, and the torch dtype each names."""


def require_torch(who: str) -> None:
    """Raise a :class:`ConfigurationError` naming the extra when torch or transformers is absent."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigurationError(f"{who} needs {' and '.join(missing)}: {install_hint('local')}")


def check_dtype(dtype: str) -> None:
    """Refuse a ``dtype`` option that is neither ``"auto"`` nor in :data:`DTYPES`."""
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigurationError(f"unknown dtype {dtype!r}; use 'auto' or one of {list(DTYPES)}")


def torch_dtype(torch: Any, dtype: str, device: str) -> Any:
    """The torch dtype to load with: as asked, or for ``"auto"`` bfloat16 on CUDA, else float32."""
    if dtype != "auto":
        return getattr(torch, DTYPES[dtype])
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return torch.bfloat16 if on_cuda else torch.float32


_T = TypeVar("_T")
_Model = TypeVar("_Model", bound="LoadedModel")


class Lazy(Generic[_T]):
    """A value loaded on first use and shared by every thread.

    ``lock`` (re-entrant) guards the loading; hold it around every use of a model, too, so that
    calls from several threads run one at a time.
    """

    def __init__(self, load: Callable[[], _T]) -> None:
        self.lock = threading.RLock()
        self._load = load
        self._value: _T | None = None

    def get(self) -> _T:
        """The value, loading it first if needed (a failed load is tried again next time)."""
        with self.lock:
            if self._value is None:
                self._value = self._load()
            return self._value

    def drop(self) -> None:
        """Forget the value; the next :meth:`get` loads it again."""
        with self.lock:
            self._value = None


@dataclass
class LoadedModel:
    """A checkpoint loaded with torch: the model, its processor, and its stop tokens."""

    torch: Any
    model: Any
    processor: Any
    chat_template: str
    eos_ids: frozenset[int]
    """Tokens that end a generation (the generation config's and the tokenizer's)."""
    pad_id: int

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    @property
    def device(self) -> Any:
        """Where the model's inputs go."""
        return self.model.device

    @classmethod
    def ready(
        cls: type[_Model],
        *,
        torch: Any,
        model: Any,
        processor: Any,
        chat_template: str,
        **more: Any,
    ) -> _Model:
        """Finish loading: eval mode, left padding, stop ids; ``more`` fills a subclass's fields."""
        model.eval()
        tokenizer = processor.tokenizer
        # Batched generation is only correct with the padding on the left (the new tokens must
        # follow every prompt directly); Qwen's tokenizer pads on the right by default.
        tokenizer.padding_side = "left"
        eos_ids = _as_ids(getattr(model.generation_config, "eos_token_id", None))
        eos_ids |= _as_ids(tokenizer.eos_token_id)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = min(eos_ids) if eos_ids else 0
        return cls(
            torch=torch,
            model=model,
            processor=processor,
            chat_template=chat_template,
            eos_ids=frozenset(eos_ids),
            pad_id=int(pad_id),
            **more,
        )


def as_auditor_error(exc: Exception) -> AuditorError:
    """Model trouble as a value: an :class:`AuditorError` (the original as its cause)."""
    if isinstance(exc, AuditorError):
        return exc
    if isinstance(exc, ConfigurationError):
        return AuditorError(str(exc))
    error = AuditorError(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _as_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}
