"""Who did it: actor names compared as identities, not as strings.

Maker-checker means "a different person", and ``Bob``, ``bob``, ``ｂｏｂ``, ``bob`` followed by a
zero-width space, and ``bоb`` with a Cyrillic ``о`` are all the same person to a reader of the
record. So a name is first made canonical with the RFC 8265 PRECIS ``UsernameCaseMapped``
profile (width and case mapped, NFC; invisible and other disallowed characters refused), and two
names are the same person when their UTS #39 confusable skeletons are equal. The canonical form is
what a record keeps; the skeleton is only ever compared.

The profile comes from ``precis-i18n``; the confusable data (Unicode's ``confusables.txt``, as
groups of characters that look alike) from ``confusable-homoglyphs``.
"""

from __future__ import annotations

import functools
import unicodedata

import precis_i18n
from confusable_homoglyphs import confusables

from refundry.core.errors import RefundryError

_PROFILE = precis_i18n.get_profile("UsernameCaseMapped")
_MARKS = "\u200e\u200f"  # the data wraps right-to-left characters in direction marks


class IdentityError(RefundryError):
    """A name that cannot identify anyone (empty, or holding characters RFC 8265 refuses)."""


def canonical(name: str) -> str:
    """The RFC 8265 ``UsernameCaseMapped`` form of ``name``; spaces separate parts, each of
    which is enforced on its own (RFC 8265 section 3.5), so ``Jane Doe`` is ``jane doe``."""
    parts = str(name).split(" ")
    if not any(parts):
        raise IdentityError("a name is needed")
    out = []
    for part in parts:
        try:
            out.append(_PROFILE.enforce(part))
        except UnicodeError as exc:
            bad = _offending(part, exc)
            raise IdentityError(f"`{_shown(name)}` is not a user name (rfc 8265): {bad}") from None
    return " ".join(out)


def _offending(part: str, exc: UnicodeError) -> str:
    start = getattr(exc, "start", None)
    if not part:
        return "it has two spaces in a row, or one at an end"
    if isinstance(start, int) and start < len(part):
        ch = part[start]
        return f"character U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed').lower()}) is not allowed"
    return "it is not a valid name"


def _shown(name: str) -> str:
    return "".join(ch if ch.isprintable() else f"\\u{ord(ch):04x}" for ch in str(name))[:60]


@functools.cache
def _prototypes() -> dict[str, str]:
    """Each character that has look-alikes mapped to one member of its group (the smallest
    single character), so that every member of a group maps to the same one."""
    out: dict[str, str] = {}
    for char, alikes in confusables.confusables_data.items():
        group = {char} | {a["c"].strip(_MARKS) for a in alikes}
        singles = sorted(g for g in group if len(g) == 1)
        if singles:
            out[char] = singles[0]
    return out


@functools.lru_cache(maxsize=8192)
def skeleton(name: str) -> str:
    """The UTS #39 skeleton: NFD, each character replaced by its confusable prototype, NFD."""
    table = _prototypes()
    mapped = "".join(table.get(ch, ch) for ch in unicodedata.normalize("NFD", name))
    return unicodedata.normalize("NFD", mapped)


def same_person(a: str, b: str) -> bool:
    """Whether two recorded names are one identity: equal confusable skeletons of their
    canonical forms. A name recorded before names were canonical is compared case-blind."""
    return skeleton(_loose(a)) == skeleton(_loose(b))


@functools.lru_cache(maxsize=8192)  # pure, and verify asks it for every reviewer of every case
def _loose(name: str) -> str:
    try:
        return canonical(name)
    except IdentityError:
        stripped = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cf", "Zs"))
        return unicodedata.normalize("NFKC", stripped).casefold()
