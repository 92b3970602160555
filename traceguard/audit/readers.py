"""Reading chat logs as a stream of :class:`LogItem`: one per future output line, in order.

Supported formats (``--format``):

``openai``
    JSON Lines of ``{"messages": [...]}`` chat conversations.
``openai-batch``
    A Batch API request file, joined by ``custom_id`` with its output file.
``sharegpt``
    ``{"conversations": [{"from": "human"|"gpt", "value": ...}], "image": ...}``, as JSON Lines
    or a JSON array, with ``<image>`` placeholders.
``guardtrace``
    The GuardTrace data set: ``image_name``, ``question``, ``thinking``, ``response``,
    ``evaluation_result``; a JSON array or JSON Lines.
``langchain``
    One conversation per line, as written by langchain-core's ``messages_to_dict``.

Readers never raise for bad input: a line that is not JSON, or not of the format, becomes an
item with a ``problem``, which the runner writes as an ``invalid_input`` record.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PosixPath, WindowsPath
from typing import IO, Any, Literal, cast, get_args

from traceguard._exceptions import ConfigurationError
from traceguard._trace import Trace
from traceguard._verdict import ErrorInfo
from traceguard.audit._batch import (
    BatchOutputIndex,
    default_output_path,
    is_output_file_name,
    output_message,
)
from traceguard.audit._formats import chat_message, langchain_message, sharegpt_messages
from traceguard.audit._jsonarray import iter_records
from traceguard.audit._jsonstream import (
    UNREADABLE_INPUT,
    BadRecord,
    ByteCounter,
    RawRecord,
    first_significant_byte,
)
from traceguard.audit._messages import (
    ImageResolver,
    LogItem,
    Message,
    ShapeError,
    Source,
    conversation_items,
    parse_expected_risk,
)

__all__ = ["FORMATS", "FolderFile", "Format", "LogReader", "detect_format", "expand_inputs"]

Format = Literal["openai", "openai-batch", "sharegpt", "guardtrace", "langchain"]
FORMATS: tuple[Format, ...] = get_args(Format)
_LOG_SUFFIXES = (".jsonl", ".json")

_DETECT_RECORDS = 20

if sys.platform == "win32":  # pragma: no cover
    _ConcretePath = WindowsPath
else:
    _ConcretePath = PosixPath


class FolderFile(_ConcretePath):
    """A log file found by expanding a folder, not named on the command line.

    :class:`LogReader` reads an undetectable one as one ``invalid_input`` record instead of
    refusing the run: a stray ``config.json`` in a log folder must not stop the audit.
    """


def expand_inputs(paths: list[Path]) -> list[Path]:
    """The log files named by ``paths``: files as given, folders as their ``*.json[l]`` files.

    Inside a folder, Batch API output files (``x.output.jsonl``) are left out: they are read
    through their request file.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix in _LOG_SUFFIXES and not is_output_file_name(p)
            )
            if not found:
                raise ConfigurationError(f"no .jsonl or .json log files in {path}")
            files.extend(FolderFile(p) for p in found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigurationError(f"input not found: {path}")
    return files


def _classify(value: Any) -> Format | None:
    if isinstance(value, list):
        if value and all(isinstance(m, Mapping) and "type" in m and "data" in m for m in value):
            return "langchain"
        return None
    if not isinstance(value, Mapping):
        return None
    if "custom_id" in value and "body" in value:
        return "openai-batch"
    if "messages" in value:
        return "openai"
    if "conversations" in value:
        return "sharegpt"
    if {"question", "response"} <= value.keys() or "evaluation_result" in value:
        return "guardtrace"
    return None


def detect_format(path: Path) -> Format:
    """Guess a log file's format from its first records; raises ConfigurationError if unsure."""
    with path.open("rb") as fh:
        lead = first_significant_byte(fh)
        if not lead:
            return "openai"  # an empty file yields nothing in any format
        for array in (False, True) if lead == b"[" else (False,):
            fh.seek(0)
            seen = 0
            for record in iter_records(fh, array=array):
                if isinstance(record, RawRecord):
                    # A whole-file array parsed as one "line" is a list of records, not a
                    # LangChain conversation; classify its first element instead.
                    fmt = _classify(record.value)
                    if fmt is not None:
                        return fmt
                seen += 1
                if seen >= _DETECT_RECORDS:
                    break
    if is_output_file_name(path):
        raise ConfigurationError(
            f"{path} looks like a Batch API output file: pass the request file instead"
        )
    raise ConfigurationError(f"cannot detect the format of {path}; pass --format")


class LogReader:
    """Streams the items of one log file in a given format.

    ``image_root`` confines image paths (default: the log file's folder). For ``openai-batch``,
    ``batch_output`` is the output file (default: found next to the request file by name).
    """

    def __init__(
        self,
        path: Path,
        fmt: Format | Literal["auto"] = "auto",
        *,
        image_root: Path | None = None,
        batch_output: Path | None = None,
        display_path: str | None = None,
    ) -> None:
        self.path = path
        self.undetected: str | None = None
        """Why the format of a file found in a folder could not be detected (then ``items()``
        yields one ``invalid_input`` record for the file)."""
        if fmt == "auto" and isinstance(path, FolderFile):
            try:
                fmt = detect_format(path)
            except ConfigurationError as exc:
                self.undetected = str(exc)
                fmt = "openai"  # placeholder: nothing of the file is parsed
        self.format: Format = detect_format(path) if fmt == "auto" else fmt
        if self.format not in FORMATS:
            raise ConfigurationError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        self.display_path = display_path if display_path is not None else str(path)
        self.resolver = ImageResolver(image_root if image_root is not None else path.parent)
        self.counter = ByteCounter()
        self.size = path.stat().st_size
        self.batch_output: Path | None = None
        if self.format == "openai-batch":
            self.batch_output = batch_output or default_output_path(path)

    def items(self) -> Iterator[LogItem]:
        """The file's items in order; each input record yields at least one."""
        if self.undetected is not None:
            yield LogItem.invalid(
                self.display_path,
                Source(self.display_path, 1),
                self.undetected,
                kind="UndetectedFormat",
            )
            return
        index = BatchOutputIndex(self.batch_output) if self.batch_output is not None else None
        try:
            with self.path.open("rb") as fh:
                for record in self._records(fh):
                    if isinstance(record, BadRecord):
                        yield LogItem.invalid(
                            f"{self.display_path}:{record.line}",
                            Source(self.display_path, record.line),
                            record.message,
                            kind=UNREADABLE_INPUT if record.unreadable else "MalformedRecord",
                        )
                        continue
                    yield from self._record_items(record, index)
        finally:
            if index is not None:
                index.close()

    def _records(self, fh: IO[bytes]) -> Iterator[RawRecord | BadRecord]:
        """The file's JSON records: a top-level array, or JSON Lines.

        A file opening with ``[`` is an array unless its first lines are JSON values on their
        own: then it is JSON Lines whose first line happens to start with ``[`` (a damaged or
        hostile line). Read as one array, its first bad element would end the file, and every
        real record after it would be lost.
        """
        array = (
            self.format in ("sharegpt", "guardtrace", "openai")
            and first_significant_byte(fh) == b"["
            and not _looks_like_json_lines(fh)
        )
        fh.seek(0)
        fmt = self.format
        # After damage inside an array, reading restarts only at an object of this file's
        # format, never at an object nested inside a record (a chat message, a tool call).
        return iter_records(
            fh, array=array, counter=self.counter, is_record=lambda v: _classify(v) == fmt
        )

    def _record_items(self, record: RawRecord, index: BatchOutputIndex | None) -> Iterator[LogItem]:
        fallback_id = f"{self.display_path}:{record.line}"
        base_id = fallback_id
        try:
            base_id = _own_id(record.value) or fallback_id
            if self.format == "guardtrace":
                yield self._guardtrace(record, base_id)
            elif self.format == "openai-batch":
                assert index is not None
                yield from self._batch(record, base_id, index)
            else:
                messages, expected, model = self._conversation(record.value)
                yield from conversation_items(
                    messages,
                    base_id=base_id,
                    source_path=self.display_path,
                    line=record.line,
                    expected_risk=expected,
                    model=model,
                )
        except Exception as exc:
            # Not only InputError: whatever one hostile record makes a parser raise (a ValueError
            # from the OS, a RecursionError from nesting) must cost that record, not the run.
            kind = "MalformedRecord" if isinstance(exc, ShapeError) else type(exc).__name__
            yield LogItem(
                id=base_id,
                source=Source(self.display_path, record.line),
                problem=ErrorInfo(kind, f"{self.format} record: {exc}"),
            )

    def _conversation(self, value: Any) -> tuple[list[Message], float | None, str | None]:
        if self.format == "langchain":
            if not isinstance(value, list):
                raise ShapeError("a langchain line must be a JSON array of messages")
            return [langchain_message(m, self.resolver) for m in value], None, None
        if not isinstance(value, Mapping):
            raise ShapeError(f"a {self.format} record must be a JSON object")
        expected = parse_expected_risk(dict(value), "expected_risk", "label", "evaluation_result")
        if self.format == "sharegpt":
            return sharegpt_messages(value, self.resolver), expected, None
        raw_messages = value.get("messages")
        if not isinstance(raw_messages, list):
            raise ShapeError("an openai record needs a 'messages' array")
        model = value.get("model")
        return (
            [chat_message(m, self.resolver) for m in raw_messages],
            expected,
            model if isinstance(model, str) else None,
        )

    def _guardtrace(self, record: RawRecord, base_id: str) -> LogItem:
        value = record.value
        if not isinstance(value, Mapping):
            raise ShapeError("a guardtrace record must be a JSON object")
        fields = {}
        for key in ("question", "thinking", "response"):
            text = value.get(key)
            if text is not None and not isinstance(text, str):
                raise ShapeError(f"'{key}' must be a string, not {type(text).__name__}")
            fields[key] = text
        if not (fields["question"] or fields["response"]):
            missing = [k for k in ("question", "response") if fields[k] is None]
            empty = [k for k in ("question", "response") if fields[k] is not None]
            what = []
            if missing:
                what.append("missing " + " and ".join(f"'{k}'" for k in missing))
            if empty:
                what.append("empty " + " and ".join(f"'{k}'" for k in empty))
            raise ShapeError(
                "a guardtrace record needs a non-empty string 'question' or 'response' "
                f"({'; '.join(what)})"
            )
        image_name = value.get("image_name", value.get("image"))
        images: tuple[Any, ...] = ()
        names: tuple[str, ...] = ()
        if image_name:
            ref, shown = self.resolver.resolve(image_name)
            images, names = (ref,), (shown,)
        source = Source(self.display_path, record.line)
        trace = Trace(
            query=fields["question"] or "",
            response=fields["response"] or "",
            thinking=fields["thinking"],
            images=images,
            id=base_id,
            metadata={"integration": "offline", "source": source.to_dict()},
        )
        return LogItem(
            id=base_id,
            source=source,
            trace=trace,
            expected_risk=parse_expected_risk(dict(value), "evaluation_result", "expected_risk"),
            images=names,
        )

    def _batch(self, record: RawRecord, base_id: str, index: BatchOutputIndex) -> Iterator[LogItem]:
        value = record.value
        if not isinstance(value, Mapping) or not isinstance(value.get("custom_id"), str):
            raise ShapeError("a Batch API request line needs a string 'custom_id'")
        body = value.get("body")
        if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
            raise ShapeError("a Batch API request needs a chat 'body' with 'messages'")
        messages = [chat_message(m, self.resolver) for m in body["messages"]]
        source = Source(self.display_path, record.line)
        output = index.lookup(value["custom_id"])
        if output is None:
            yield LogItem(
                id=base_id,
                source=source,
                problem=ErrorInfo(
                    "MissingBatchOutput", f"no line for this custom_id in {index.path.name}"
                ),
                problem_status="error",
            )
            return
        choices, error = output_message(output)
        if choices is None:
            yield LogItem(
                id=base_id,
                source=source,
                problem=ErrorInfo("BatchRequestError", error or "request failed"),
                problem_status="error",
            )
            return
        answers = [
            chat_message(_require_choice_message(choice), self.resolver) for choice in choices
        ]
        if not answers:
            raise ShapeError("the response body has an empty 'choices' array")
        model = body.get("model")
        expected = parse_expected_risk(dict(value), "expected_risk", "label")
        for position, answer in enumerate(answers):
            # Each choice is audited against the request's conversation; with n > 1 choices
            # the turn number tells them apart.
            items = list(
                conversation_items(
                    [*messages, answer],
                    base_id=base_id,
                    source_path=self.display_path,
                    line=record.line,
                    expected_risk=expected,
                    model=model if isinstance(model, str) else None,
                )
            )
            last = items[-1]
            several = len(answers) > 1
            trace_id = f"{base_id}:{position}" if several else base_id
            source = Source(self.display_path, record.line, position if several else None)
            if last.trace is None:  # an empty answer to an empty request: nothing to audit
                yield LogItem(id=trace_id, source=source, problem=last.problem)
                continue
            yield LogItem(
                id=trace_id,
                source=source,
                trace=_with_source(last.trace, trace_id, source),
                expected_risk=expected,
                images=last.images,
            )


_SCAN_LINES = 64
_SCAN_LINE_BYTES = 1 << 20


def _looks_like_json_lines(fh: IO[bytes]) -> bool:
    """Whether two of the first lines of ``fh`` are each a whole, non-empty JSON object.

    Never true of a JSON array as written by ``json.dump`` (elements span lines, or end in
    commas); a compact one-line array is one line. Lines over 1 MiB are skipped unparsed, so a
    huge one-line array is not loaded into memory here.
    """
    fh.seek(0)
    whole = 0
    for _ in range(_SCAN_LINES):
        line = fh.readline(_SCAN_LINE_BYTES)
        if not line:
            break
        if len(line) == _SCAN_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := fh.readline(_SCAN_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            continue
        # Records of these formats are objects; a bare number or string on a line of its own
        # also occurs inside a pretty-printed array (an element of a nested list).
        if not isinstance(value, dict) or not value:
            continue
        whole += 1
        if whole >= 2:
            return True
    return False


def _with_source(trace: Trace, trace_id: str, source: Source) -> Trace:
    from dataclasses import replace

    return replace(trace, id=trace_id, metadata={**trace.metadata, "source": source.to_dict()})


def _require_choice_message(choice: Any) -> Mapping[str, Any]:
    if not isinstance(choice, Mapping) or not isinstance(choice.get("message"), Mapping):
        raise ShapeError("a choice needs a 'message' object")
    return cast(Mapping[str, Any], choice["message"])


def _own_id(value: Any) -> str | None:
    """A record's own identifier, if it has one (``custom_id`` first, then ``id``)."""
    if not isinstance(value, Mapping):
        return None
    for key in ("custom_id", "id"):
        own = value.get(key)
        if isinstance(own, str) and own:
            return own
        if isinstance(own, int) and not isinstance(own, bool):
            return str(own)
    return None
