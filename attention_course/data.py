"""Seeded synthetic tasks the chapters share, returned as padded, batched tensors.

Two families of sequence-to-sequence tasks:

- **copy / reverse** (chapters 1-2): a random string of symbols, the target is the same string
  (or its reverse). Lengths are chosen per batch, so a model can be trained and tested at
  lengths far inside and far beyond what it handles.
- **date normalisation** (chapter 2): a date written in one of several human formats,
  ``"Tuesday, November 24, 2026"`` or ``"11/24/26"``, the target is ``"2026-11-24"``.
  Character level, years 1950-2049, and a train/test split that holds out WHOLE dates (a test
  date never occurs in training in any format). Each example records which source characters
  belong to the year, month and day fields, so attention mass on the right field can be measured.

Every batch is a :class:`Seq2SeqBatch`. Conventions (shape letters: B batch, S source length,
T target length):

- ``src`` ``(B, S)`` token ids, right-padded with ``PAD`` (id 0); no BOS/EOS in the source.
- ``tgt_in`` ``(B, T)`` is ``BOS + target`` (the decoder's input under teacher forcing) and
  ``tgt_out`` ``(B, T)`` is ``target + EOS`` (what it must predict), both padded with ``PAD``.
- **Masks are True on real tokens** and False on padding (``src_mask``, ``tgt_mask``), the
  same polarity as ``F.scaled_dot_product_attention``'s boolean ``attn_mask`` (True = may
  attend). ``src_lengths``/``tgt_lengths`` count the real tokens (``tgt_lengths`` includes EOS),
  and ``mask[b, :length[b]]`` is all True, the rest all False.

Everything is seeded: pass a seed or a ``numpy.random.Generator``; the same seed gives the same
batches on every machine (only NumPy's ``default_rng`` and the standard library are used).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

__all__ = [
    "BOS",
    "EOS",
    "FIELD_NAMES",
    "PAD",
    "DATE_FORMATS",
    "DateExample",
    "DateTask",
    "Seq2SeqBatch",
    "SequenceTask",
    "Vocab",
    "copy_task",
    "date_example",
    "format_date",
    "make_batch",
    "parse_date",
    "reverse_task",
]

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)  # ids 0, 1, 2 in every vocabulary

# Field label of each source/target character in the date task (index into FIELD_NAMES);
# padding positions get -1.
FIELD_NAMES = ("other", "year", "month", "day", "weekday")
FIELD_PAD = -1


class Vocab:
    """A token <-> id table with the special tokens PAD (0), BOS (1) and EOS (2) first.

    ``encode`` turns a sequence of symbols (or a string, one symbol per character) into ids;
    ``decode`` turns ids back into symbols, stopping at the first EOS and dropping PAD/BOS.
    """

    def __init__(self, symbols: Sequence[str]):
        symbols = list(symbols)
        if len(set(symbols)) != len(symbols):
            raise ValueError("vocabulary symbols must be distinct")
        if set(symbols) & set(SPECIALS):
            raise ValueError(f"{SPECIALS} are added automatically")
        self.itos: list[str] = [*SPECIALS, *symbols]  # id -> symbol
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}  # symbol -> id
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def symbols(self) -> list[str]:
        """The ordinary (non-special) symbols, in id order."""
        return self.itos[len(SPECIALS) :]

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} ids: {self.itos[:8]}{' ...' if len(self) > 8 else ''})"

    def encode(self, symbols: Sequence[str], bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of ``symbols`` (a string is read one character per symbol), optionally framed."""
        try:
            ids = [self.stoi[s] for s in symbols]
        except KeyError as err:
            raise ValueError(f"symbol {err.args[0]!r} is not in the vocabulary {self}") from None
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids) -> list[str]:
        """Symbols of ``ids`` (list, array or 1-D tensor): stops at EOS, drops PAD and BOS."""
        out = []
        for i in np.asarray(ids.tolist() if hasattr(ids, "tolist") else ids).ravel():
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(self.itos[int(i)])
        return out

    def to_text(self, ids, sep: str = "") -> str:
        """``decode`` joined into one string (character-level vocabularies use ``sep=""``)."""
        return sep.join(self.decode(ids))


@dataclass
class Seq2SeqBatch:
    """A padded batch of (source, target) pairs. Masks: True = real token, False = padding."""

    src: torch.Tensor  # (B, S) long, source ids right-padded with PAD (0)
    src_lengths: torch.Tensor  # (B,) long, real source tokens per example
    src_mask: torch.Tensor  # (B, S) bool, True where src is a real token
    tgt_in: torch.Tensor  # (B, T) long, BOS + target: the decoder input under teacher forcing
    tgt_out: torch.Tensor  # (B, T) long, target + EOS: what the decoder must predict
    tgt_lengths: torch.Tensor  # (B,) long, real target tokens per example INCLUDING the EOS
    tgt_mask: torch.Tensor  # (B, T) bool, True where tgt_out is a real token (or the EOS)
    src_text: list[str] = field(default_factory=list)  # the sources as strings (one per example)
    tgt_text: list[str] = field(default_factory=list)  # the targets as strings (no EOS)
    src_fields: torch.Tensor | None = None  # (B, S) long FIELD_NAMES index (dates), -1 on PAD
    tgt_fields: torch.Tensor | None = None  # (B, T) long field of each tgt_out position, -1 PAD

    def __len__(self) -> int:
        return self.src.shape[0]

    def to(self, device) -> Seq2SeqBatch:
        """A copy with every tensor moved to ``device``."""
        moved = {
            name: value.to(device)
            for name, value in vars(self).items()
            if isinstance(value, torch.Tensor)
        }
        return replace(self, **moved)


def _pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad integer rows into a ``(B, max_len)`` long tensor; also return the lengths."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)  # (B,)
    out = torch.full((len(rows), int(lengths.max()) if len(rows) else 0), value, dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out, lengths


def make_batch(
    sources: Sequence[Sequence[str]],
    targets: Sequence[Sequence[str]],
    src_vocab: Vocab,
    tgt_vocab: Vocab | None = None,
    src_fields: Sequence[Sequence[int]] | None = None,
    tgt_fields: Sequence[Sequence[int]] | None = None,
    sep: str = "",
) -> Seq2SeqBatch:
    """Encode and pad (source, target) symbol sequences into a :class:`Seq2SeqBatch`.

    ``sources[b]`` and ``targets[b]`` are strings or lists of symbols. ``tgt_vocab`` defaults to
    ``src_vocab``. Optional per-symbol field labels (dates) are padded with -1; a target's EOS
    position gets field 0 ("other").
    """
    tgt_vocab = src_vocab if tgt_vocab is None else tgt_vocab
    src, src_lengths = _pad([src_vocab.encode(s) for s in sources], src_vocab.pad_id)
    tgt_in, _ = _pad([tgt_vocab.encode(t, bos=True) for t in targets], tgt_vocab.pad_id)
    tgt_out, tgt_lengths = _pad([tgt_vocab.encode(t, eos=True) for t in targets], tgt_vocab.pad_id)
    S, T = src.shape[1], tgt_out.shape[1]
    batch = Seq2SeqBatch(
        src=src,
        src_lengths=src_lengths,
        src_mask=torch.arange(S)[None, :] < src_lengths[:, None],  # (B, S) True = real token
        tgt_in=tgt_in,
        tgt_out=tgt_out,
        tgt_lengths=tgt_lengths,
        tgt_mask=torch.arange(T)[None, :] < tgt_lengths[:, None],  # (B, T) True = real token
        src_text=[sep.join(s) for s in sources],
        tgt_text=[sep.join(t) for t in targets],
    )
    if src_fields is not None:
        batch.src_fields, _ = _pad(src_fields, FIELD_PAD)
    if tgt_fields is not None:
        batch.tgt_fields, _ = _pad([[*f, 0] for f in tgt_fields], FIELD_PAD)
    return batch


def _rng(seed_or_rng: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


# --------------------------------------------------------------------------- copy / reverse


@dataclass
class SequenceTask:
    """Copy (or reverse) a random string of ``num_symbols`` symbols: ``"cadb" -> "cadb"``.

    The source vocabulary is also the target vocabulary (``task.vocab``). Symbols are the
    letters ``a, b, c, ...`` so that a string reads easily (``"hcjabe"``).
    """

    num_symbols: int = 10  # how many distinct ordinary symbols (at most 26)
    reverse: bool = False  # False: target = source (copy); True: target = reversed source

    def __post_init__(self):
        if not 1 <= self.num_symbols <= 26:
            raise ValueError("num_symbols must be in 1..26")
        self.vocab = Vocab([chr(ord("a") + i) for i in range(self.num_symbols)])

    @property
    def name(self) -> str:
        return "reverse" if self.reverse else "copy"

    @property
    def src_vocab(self) -> Vocab:
        return self.vocab

    @property
    def tgt_vocab(self) -> Vocab:
        return self.vocab

    def target_of(self, source: str) -> str:
        """The target string for a source string."""
        return source[::-1] if self.reverse else source

    def sample(
        self,
        batch_size: int,
        length: int | tuple[int, int],
        seed: int | np.random.Generator | None = None,
    ) -> Seq2SeqBatch:
        """A batch of random examples.

        ``length`` is one int (every example has that length: the copy experiments use one
        length per batch) or an inclusive range ``(lo, hi)`` drawn per example (mixed lengths,
        so padding and masks matter).
        """
        rng = _rng(seed)
        if isinstance(length, int):
            lengths = np.full(batch_size, length)
        else:
            lo, hi = length
            lengths = rng.integers(lo, hi + 1, size=batch_size)
        if lengths.min() < 1:
            raise ValueError("lengths must be >= 1")
        symbols = self.vocab.symbols
        sources = ["".join(symbols[i] for i in rng.integers(0, len(symbols), n)) for n in lengths]
        return make_batch(sources, [self.target_of(s) for s in sources], self.vocab)

    def curriculum(
        self,
        steps: int,
        batch_size: int = 64,
        min_length: int = 3,
        max_length: int = 40,
        start_max_length: int = 8,
        ramp_fraction: float = 0.4,
        seed: int | np.random.Generator | None = 0,
    ) -> Iterator[Seq2SeqBatch]:
        """``steps`` training batches, one length per batch, with a curriculum on the length.

        At step t the length is drawn uniformly from ``min_length .. cap(t)``, where the cap rises
        linearly from ``start_max_length`` to ``max_length`` over the first ``ramp_fraction`` of
        the steps and then stays at ``max_length``.
        """
        rng = _rng(seed)
        ramp = max(1, int(round(ramp_fraction * steps)))
        for t in range(steps):
            cap = start_max_length + (max_length - start_max_length) * min(1.0, t / ramp)
            cap = max(min_length, int(round(cap)))
            yield self.sample(batch_size, int(rng.integers(min_length, cap + 1)), rng)


def copy_task(num_symbols: int = 10) -> SequenceTask:
    """The copy task of chapters 1-2."""
    return SequenceTask(num_symbols=num_symbols, reverse=False)


def reverse_task(num_symbols: int = 10) -> SequenceTask:
    """The reverse task: the target is the source read backwards."""
    return SequenceTask(num_symbols=num_symbols, reverse=True)


# --------------------------------------------------------------------------- dates

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_DATE, LAST_DATE = dt.date(1950, 1, 1), dt.date(2049, 12, 31)

# Each format writes a date as a list of (text, field) segments; field indexes FIELD_NAMES.
# English names are spelled out here (never strftime's %B, which depends on the locale).
# A two-digit year yy means 19yy for yy >= 50 and 20yy otherwise (the task's 1950-2049 window).
_O, _Y, _M, _D, _W = range(5)
DATE_FORMATS = {
    # "24 Nov 2026"
    "d Mon yyyy": lambda x: [(str(x.day), _D), (" ", _O), (MONTHS[x.month - 1][:3], _M),
                             (" ", _O), (f"{x.year:04d}", _Y)],
    # "11/24/26"
    "mm/dd/yy": lambda x: [(f"{x.month:02d}", _M), ("/", _O), (f"{x.day:02d}", _D), ("/", _O),
                           (f"{x.year % 100:02d}", _Y)],
    # "Tuesday, November 24, 2026"
    "Weekday, Month d, yyyy": lambda x: [(WEEKDAYS[x.weekday()], _W), (", ", _O),
                                         (MONTHS[x.month - 1], _M), (" ", _O), (str(x.day), _D),
                                         (", ", _O), (f"{x.year:04d}", _Y)],
    # "2026.11.24"
    "yyyy.mm.dd": lambda x: [(f"{x.year:04d}", _Y), (".", _O), (f"{x.month:02d}", _M),
                             (".", _O), (f"{x.day:02d}", _D)],
    # "24 November 2026"
    "d Month yyyy": lambda x: [(str(x.day), _D), (" ", _O), (MONTHS[x.month - 1], _M), (" ", _O),
                               (f"{x.year:04d}", _Y)],
    # "Nov 24, 2026"
    "Mon d, yyyy": lambda x: [(MONTHS[x.month - 1][:3], _M), (" ", _O), (str(x.day), _D),
                              (", ", _O), (f"{x.year:04d}", _Y)],
    # "24.11.2026"
    "dd.mm.yyyy": lambda x: [(f"{x.day:02d}", _D), (".", _O), (f"{x.month:02d}", _M), (".", _O),
                             (f"{x.year:04d}", _Y)],
}  # fmt: skip


def _segments(date: dt.date, fmt: str) -> list[tuple[str, int]]:
    if fmt not in DATE_FORMATS:
        raise ValueError(f"unknown date format {fmt!r}; choose from {list(DATE_FORMATS)}")
    if not FIRST_DATE <= date <= LAST_DATE:
        raise ValueError(f"dates must lie in {FIRST_DATE}..{LAST_DATE}, got {date}")
    return DATE_FORMATS[fmt](date)


def format_date(date: dt.date, fmt: str) -> str:
    """Write ``date`` in the named format, e.g. ``format_date(date(2026, 11, 24), "mm/dd/yy")``."""
    return "".join(text for text, _ in _segments(date, fmt))


def iso(date: dt.date) -> str:
    """The target form: ``"2026-11-24"``."""
    return f"{date.year:04d}-{date.month:02d}-{date.day:02d}"


_ISO_FIELDS = [_Y] * 4 + [_O] + [_M] * 2 + [_O] + [_D] * 2  # field of each char of "yyyy-mm-dd"


@dataclass(frozen=True)
class DateExample:
    """One date-normalisation example with the field of every character."""

    date: dt.date  # the calendar date
    fmt: str  # the name of its source format (a key of DATE_FORMATS)
    src: str  # e.g. "Tuesday, November 24, 2026"
    tgt: str  # e.g. "2026-11-24"
    src_fields: tuple[int, ...]  # FIELD_NAMES index of each source character
    tgt_fields: tuple[int, ...]  # FIELD_NAMES index of each target character


def date_example(date: dt.date, fmt: str) -> DateExample:
    """The example for ``date`` written in format ``fmt``."""
    segments = _segments(date, fmt)
    src = "".join(text for text, _ in segments)
    src_fields = tuple(f for text, f in segments for _ in text)
    return DateExample(date, fmt, src, iso(date), src_fields, tuple(_ISO_FIELDS))


# The format names double as patterns: each token below is one field of the date.
_FIELD_PATTERNS = {
    "yyyy": r"(?P<year>\d{4})",
    "yy": r"(?P<yy>\d{2})",
    "mm": r"(?P<month>\d{2})",
    "dd": r"(?P<day>\d{2})",
    "d": r"(?P<day>\d{1,2})",
    "Weekday": r"(?P<weekday>[A-Za-z]+)",
    "Month": r"(?P<month_name>[A-Za-z]+)",
    "Mon": r"(?P<month_name>[A-Za-z]{3})",
}
_TOKEN = re.compile(r"(yyyy|yy|mm|dd|Weekday|Month|Mon|d)")


def _format_regex(fmt: str) -> re.Pattern:
    pieces = _TOKEN.split(fmt)  # odd positions are field tokens, even ones literal text
    return re.compile(
        "".join(_FIELD_PATTERNS[p] if i % 2 else re.escape(p) for i, p in enumerate(pieces))
    )


def parse_date(text: str, fmt: str | None = None) -> dt.date:
    """Read a date written in one of ``DATE_FORMATS`` (the inverse of ``format_date``).

    Standard library only (``re`` and ``datetime``). A two-digit year ``yy`` means ``19yy`` when
    ``yy >= 50`` and ``20yy`` otherwise. ``fmt`` restricts the search to one format. Raises
    ``ValueError`` when the text matches no format, or names a weekday that does not fit.
    """
    text = text.strip()
    month_of = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}
    month_of.update({m[:3].lower(): i + 1 for i, m in enumerate(MONTHS)})
    for name in [fmt] if fmt else DATE_FORMATS:
        match = _format_regex(name).fullmatch(text)
        if match is None:
            continue
        parts = match.groupdict()
        if "yy" in parts:
            yy = int(parts["yy"])
            year = 1900 + yy if yy >= 50 else 2000 + yy
        else:
            year = int(parts["year"])
        if "month_name" in parts:
            month = month_of.get(parts["month_name"].lower())
            if month is None:
                continue
        else:
            month = int(parts["month"])
        try:
            date = dt.date(year, month, int(parts["day"]))
        except ValueError:
            continue
        weekday = parts.get("weekday")
        if weekday is not None and weekday.capitalize() != WEEKDAYS[date.weekday()]:
            raise ValueError(f"{text!r}: {date} is a {WEEKDAYS[date.weekday()]}")
        return date
    raise ValueError(f"{text!r} matches none of the formats {list(DATE_FORMATS)}")


def _all_dates() -> np.ndarray:
    """Every date from 1950-01-01 to 2049-12-31 as day ordinals (int64)."""
    return np.arange(FIRST_DATE.toordinal(), LAST_DATE.toordinal() + 1, dtype=np.int64)


class DateTask:
    """Date normalisation at the character level: ``"Tuesday, November 24, 2026" -> "2026-11-24"``.

    ``seed`` fixes the train/test split: ``n_test_dates`` whole calendar days are held out
    (never shown in training in any format); ``test_dates``/``train_dates`` hold them as
    ``datetime.date`` objects. ``formats`` restricts the source formats (default: all of
    ``DATE_FORMATS``). ``src_vocab`` holds every character any format can write; ``tgt_vocab``
    holds the digits and ``"-"``.
    """

    def __init__(self, seed: int = 0, n_test_dates: int = 2000, formats: Sequence[str] = ()):
        self.formats = list(formats) or list(DATE_FORMATS)
        for f in self.formats:
            if f not in DATE_FORMATS:
                raise ValueError(f"unknown date format {f!r}; choose from {list(DATE_FORMATS)}")
        ordinals = _all_dates()
        order = np.random.default_rng(seed).permutation(len(ordinals))
        self._test = np.sort(ordinals[order[:n_test_dates]])  # held-out days (ordinals)
        self._train = np.sort(ordinals[order[n_test_dates:]])  # training days (ordinals)
        chars = set("0123456789 ,./-")
        for name in (*MONTHS, *WEEKDAYS):
            chars.update(name)
        self.src_vocab = Vocab(sorted(chars))
        self.tgt_vocab = Vocab(list("0123456789-"))

    @property
    def train_dates(self) -> list[dt.date]:
        return [dt.date.fromordinal(int(o)) for o in self._train]

    @property
    def test_dates(self) -> list[dt.date]:
        return [dt.date.fromordinal(int(o)) for o in self._test]

    def examples(self, dates: Sequence[dt.date], formats: Sequence[str]) -> list[DateExample]:
        """One example per (date, format) pair, zipped."""
        return [date_example(d, f) for d, f in zip(dates, formats, strict=True)]

    def batch(self, examples: Sequence[DateExample]) -> Seq2SeqBatch:
        """Encode and pad examples (with their field labels) into a batch."""
        return make_batch(
            [e.src for e in examples],
            [e.tgt for e in examples],
            self.src_vocab,
            self.tgt_vocab,
            src_fields=[e.src_fields for e in examples],
            tgt_fields=[e.tgt_fields for e in examples],
        )

    def sample(
        self,
        batch_size: int,
        split: str = "train",
        seed: int | np.random.Generator | None = None,
        formats: Sequence[str] | None = None,
    ) -> Seq2SeqBatch:
        """A batch of random dates from ``split`` ("train" or "test"), each in a random format.

        Formats differ in length, so a batch mixes lengths and its masks matter.
        """
        rng = _rng(seed)
        pool = {"train": self._train, "test": self._test}[split]
        formats = list(formats) if formats else self.formats
        ordinals = rng.choice(pool, size=batch_size)
        chosen = rng.integers(0, len(formats), size=batch_size)
        dates = [dt.date.fromordinal(int(o)) for o in ordinals]
        return self.batch(self.examples(dates, [formats[i] for i in chosen]))

    def batches(
        self, batch_size: int = 64, seed: int | np.random.Generator | None = 0, split="train"
    ) -> Iterator[Seq2SeqBatch]:
        """An endless stream of training batches (seeded)."""
        rng = _rng(seed)
        while True:
            yield self.sample(batch_size, split, rng)

    def encode_sources(self, texts: Sequence[str]) -> Seq2SeqBatch:
        """A batch for arbitrary source strings (e.g. typed by a reader).

        Field labels are filled when a text parses as a date in one of the formats (the target is
        then its ISO form); otherwise the target is empty and ``src_fields`` is None.
        """
        examples = []
        for text in texts:
            date = parse_date(text)
            match = [f for f in self.formats if format_date(date, f) == text.strip()]
            if not match:
                raise ValueError(f"{text!r} is a date but not written exactly in a known format")
            examples.append(date_example(date, match[0]))
        return self.batch(examples)
