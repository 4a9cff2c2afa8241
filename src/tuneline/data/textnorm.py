"""Text patterns and normalizers shared by `clean` (which removes noise) and `validate_splits`
(which proves none is left).

Every normalizer is a pure `str -> str` function built on precompiled regexes (no per-character Python
loops) so the clean stage stays fast; each has a cheap "is there anything to do?" check first, because
most texts need no change at all.

Code is data: HTML, number and date rewriting skip Markdown code (``` fences and `inline` spans) when
asked to, because "How do I use `<br>`?" or `f(1,234)` would lose their meaning. E-mails and URLs are
replaced everywhere, code included: personal data is never kept for the sake of code.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
import unicodedata
from collections.abc import Callable
from typing import Literal

# Element names of HTML (current and obsolete ones still found in scraped text). A tag must name one of
# them, so "a < b", "x<5", generics such as List<String> and our own "<URL>" / "<EMAIL>" placeholders
# are not taken for HTML.
_HTML_ELEMENTS = (
    "a|abbr|acronym|address|area|article|aside|audio|b|base|basefont|bdi|bdo|big|blink|blockquote|body|"
    "br|button|canvas|caption|center|cite|code|col|colgroup|data|datalist|dd|del|details|dfn|dialog|dir|"
    "div|dl|dt|em|embed|fieldset|figcaption|figure|font|footer|form|frame|frameset|h[1-6]|head|header|"
    "hgroup|hr|html|i|iframe|img|input|ins|kbd|label|legend|li|link|main|map|mark|marquee|menu|meta|"
    "meter|nav|nobr|noscript|object|ol|optgroup|option|output|p|param|picture|pre|progress|q|rp|rt|ruby|"
    "s|samp|script|section|select|small|source|span|strike|strong|style|sub|summary|sup|svg|table|tbody|"
    "td|template|textarea|tfoot|th|thead|time|title|tr|track|tt|u|ul|var|video|wbr"
)
# An HTML tag: <p>, </div>, <br/>, <a href="…">, <!-- comments -->, <!DOCTYPE html>.
HTML_TAG_RE = re.compile(
    rf"<!--.*?-->|<!doctype[^<>]*>|</?(?:{_HTML_ELEMENTS})(?=[\s/>])(?:\s[^<>]*)?/?>",
    re.DOTALL | re.IGNORECASE,
)
# Named or numeric HTML entities: &amp; &nbsp; &#39; &#x27; (the ';' is required: "a=1&notify=2" in a URL
# is not an entity, although lenient HTML parsers would read "&not" as "¬").
HTML_ENTITY_RE = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
# CJK ideographs, kana, hangul and full-width forms end a URL: Chinese text writes "访问http://x.cn获取".
_CJK = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
# The first character is matched as a plain set and the boundary checked behind it: that lets the regex
# engine skip ahead to candidate letters instead of trying every position (3x faster on prose).
URL_RE = re.compile(
    r"[hHfFwW](?<![A-Za-z0-9._\-][hHfFwW])(?i:ttps?://|tp://|ww\.)"
    rf"""[^\s<>"'`{_CJK})\]}}]*[^\s<>"'`{_CJK})\]}}.,;:!?]"""
)
# The local part starts where an ASCII run starts (not at a word boundary: "请联系john@x.com" has none).
EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
)
# Markdown code: fenced blocks first (they may contain single backticks), then inline spans.
CODE_SPAN_RE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)

_NEWLINES_RE = re.compile(r"\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
# C0/C1 controls except \t and \n, BOM, zero-width space, word joiners, soft hyphen and bidi overrides.
# ZWJ/ZWNJ (U+200C/U+200D) are kept: emoji sequences and Persian/Indic spelling depend on them.
_CONTROL_RE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u2069\ufeff\ufff9-\ufffb]+"
)
_SPECIAL_RE = re.compile(f"{_NEWLINES_RE.pattern}|{_CONTROL_RE.pattern}")
_ASCII_CONTROL = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])  # all but \t and \n
_SCRIPT_STYLE_RE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
# Tags that start a new line when a browser renders them; cells become a space so "a</td><td>b" stays apart.
_BLOCK_TAG_RE = re.compile(
    r"</?(?:br|p|div|li|ul|ol|dl|dt|dd|tr|table|thead|tbody|tfoot|h[1-6]|blockquote|pre|section|article|"
    r"header|footer|nav|aside|main|hr|figure|figcaption|form|title)(?=[\s/>])[^<>]*>",
    re.IGNORECASE,
)
_CELL_TAG_RE = re.compile(r"</?(?:td|th)(?=[\s/>])[^<>]*>", re.IGNORECASE)
_TRAILING_WS_RE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUN_RE = re.compile(r"\n{4,}")  # 4 newlines = 3 blank lines
# 1,234 and 1,234,567 (optionally followed by decimals), never "1,2", "1, 2, 3", "12,34,567" or "1.234,5".
# (Starts with a plain digit set, the boundary checked behind it, so the engine can skip to digits.)
_THOUSANDS_RE = re.compile(r"[0-9](?<![0-9A-Za-z_.,][0-9])[0-9]{0,2}(?:,[0-9]{3})+(?![0-9]|,[0-9])")

_MONTHS = {
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7, "august": 8,
    "september": 9, "october": 10, "november": 11, "december": 12, "jan": 1, "feb": 2, "mar": 3,
    "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9, "oct": 10, "nov": 11, "dec": 12,
}
_ORD = r"(?:st|nd|rd|th)?"
# Only forms whose day/month order cannot be misread: month names, year-first numerics, Chinese 年月日.
# "03/05/2024" (US March 5 or European 3 May?) is deliberately not matched. '.'-separated numerics are
# not dates either: "2023.7.22" is far more often a version number. Month names are matched as any
# 3-9 letter word and checked in the callback: much faster than a case-insensitive alternation.
_DATE_RE = re.compile(
    rf"\b(?P<m1>[A-Za-z]{{3,9}})\.?\s+(?P<d1>[0-9]{{1,2}}){_ORD},?\s+(?P<y1>[0-9]{{4}})(?![0-9])"
    rf"|\b(?P<d2>[0-9]{{1,2}}){_ORD}\s+(?:of\s+)?(?P<m2>[A-Za-z]{{3,9}})\.?,?\s+(?P<y2>[0-9]{{4}})(?![0-9])"
    r"|(?<![0-9/.\-])(?P<y3>[0-9]{4})(?P<sep>[/\-])(?P<m3>[0-9]{1,2})(?P=sep)(?P<d3>[0-9]{1,2})(?![0-9/\-])"
    r"|(?P<y4>[0-9]{4})\s*年\s*(?P<m4>[0-9]{1,2})\s*月\s*(?P<d4>[0-9]{1,2})\s*[日号]"
)
_FOUR_DIGITS_RE = re.compile(r"[0-9]{4}")

Mode = Literal["remove", "placeholder", "keep"]


def normalize_unicode(text: str) -> str:
    """NFKC: full-width digits and letters, ligatures and compatibility forms become their canonical form."""
    if text.isascii() or unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text)


def _ascii_clean(text: str) -> bool:
    # Most text is ASCII without any control character: bytes.translate proves it at memory speed.
    if not text.isascii():
        return False
    raw = text.encode("ascii")
    return len(raw.translate(None, _ASCII_CONTROL)) == len(raw)


def has_special_chars(text: str) -> bool:
    """Whether `normalize_newlines` or `strip_control` would change `text` (one scan for both)."""
    if text.isascii():
        return not _ascii_clean(text)
    return _SPECIAL_RE.search(text) is not None


def normalize_newlines(text: str) -> str:
    """\\r\\n, \\r, vertical tab, form feed and Unicode line/paragraph separators become \\n."""
    if _ascii_clean(text):
        return text
    return _NEWLINES_RE.sub("\n", text)


def strip_control(text: str) -> str:
    """Drop control characters (but \\t and \\n), BOMs, zero-width spaces, soft hyphens and bidi overrides."""
    if _ascii_clean(text):
        return text
    return _CONTROL_RE.sub("", text)


def split_code(text: str) -> list[tuple[bool, str]]:
    """Split text into (is_code, segment) pieces along Markdown code fences and inline code spans."""
    if "`" not in text:
        return [(False, text)]
    pieces: list[tuple[bool, str]] = []
    last = 0
    for m in CODE_SPAN_RE.finditer(text):
        if m.start() > last:
            pieces.append((False, text[last : m.start()]))
        pieces.append((True, m.group(0)))
        last = m.end()
    if last < len(text):
        pieces.append((False, text[last:]))
    return pieces


def outside_code(text: str, fn: Callable[[str], str], protect_code: bool = True) -> str:
    """Apply `fn` to the prose of `text`, leaving Markdown code untouched when `protect_code`."""
    if not protect_code or "`" not in text:
        return fn(text)
    return "".join(seg if is_code else fn(seg) for is_code, seg in split_code(text))


def _unescape_entity(m: re.Match[str]) -> str:
    return html.unescape(m.group(0))


def unescape_entities(text: str, rounds: int = 3) -> str:
    """Decode HTML entities, repeatedly so that double-escaped text ("&amp;lt;p&amp;gt;") is decoded too."""
    for _ in range(rounds):
        if "&" not in text:
            break
        decoded = HTML_ENTITY_RE.sub(_unescape_entity, text)
        if decoded == text:
            break
        text = decoded
    return text


def _strip_html_prose(text: str) -> str:
    text = unescape_entities(text)
    if "<" in text:
        text = _SCRIPT_STYLE_RE.sub("", text)
        text = _BLOCK_TAG_RE.sub("\n", text)
        text = _CELL_TAG_RE.sub(" ", text)
        text = HTML_TAG_RE.sub("", text)
    # A non-breaking space from &nbsp; is layout, not content.
    return text.replace("\xa0", " ")


def strip_html(text: str, protect_code: bool = True) -> str:
    """Decode entities, drop <script>/<style> blocks with their content, turn block tags into newlines
    and remove every other tag. Comparisons ("a < b", "x<5") survive; Markdown code is left alone when
    `protect_code`.
    """
    if "<" not in text and "&" not in text:
        return text
    return outside_code(text, _strip_html_prose, protect_code)


def _removal(pattern: re.Pattern[str]) -> re.Pattern[str]:
    # Removing "see http://x.com for" must leave "see for", and "see http://x.com." must leave "see.":
    # take the blanks before the match along, or the blanks after it at the start of a line.
    body = pattern.pattern
    return re.compile(rf"^(?:{body})[ \t]*|[ \t]*(?:{body})", pattern.flags | re.MULTILINE)


_EMAIL_REMOVE_RE = _removal(EMAIL_RE)
_URL_REMOVE_RE = _removal(URL_RE)


def replace_emails(text: str, mode: Mode = "placeholder", placeholder: str = "<EMAIL>") -> str:
    """Remove e-mail addresses or replace each by `placeholder` (`keep` leaves them)."""
    if mode == "keep" or "@" not in text:
        return text
    if mode == "remove":
        return _EMAIL_REMOVE_RE.sub("", text)
    return EMAIL_RE.sub(placeholder.replace("\\", "\\\\"), text)


def may_hold_url(text: str) -> bool:
    """False when `URL_RE` cannot match `text`: every URL holds "://" or a "www." in some case (a few
    substring scans at memory speed spare the regex on most texts)."""
    return "://" in text or "ww." in text or "Ww." in text or "W." in text  # "W." covers wW. and WW.


def replace_urls(text: str, mode: Mode = "placeholder", placeholder: str = "<URL>") -> str:
    """Remove URLs (http, https, ftp, www.) or replace each by `placeholder` (`keep` leaves them).

    Trailing sentence punctuation and closing brackets are not part of the URL.
    """
    if mode == "keep" or not may_hold_url(text):
        return text
    if mode == "remove":
        return _URL_REMOVE_RE.sub("", text)
    return URL_RE.sub(placeholder.replace("\\", "\\\\"), text)


def _drop_commas(m: re.Match[str]) -> str:
    return m.group(0).replace(",", "")


def normalize_numbers(text: str, protect_code: bool = True) -> str:
    """Drop thousands separators from well-formed groups only: "1,234,567" -> "1234567".

    Lists ("1, 2, 3"), "1,2", irregular groups ("12,34,567") and decimals are left alone.
    """
    if "," not in text:
        return text
    return outside_code(text, lambda s: _THOUSANDS_RE.sub(_drop_commas, s), protect_code)


def _iso_date(m: re.Match[str]) -> str:
    g = m.groupdict()
    if g["y1"] or g["y2"]:
        name, day, year = (g["m1"], g["d1"], g["y1"]) if g["y1"] else (g["m2"], g["d2"], g["y2"])
        if name.lower() not in _MONTHS:
            return m.group(0)
        y, mo, d = int(year), _MONTHS[name.lower()], int(day)
    elif g["y3"]:
        y, mo, d = int(g["y3"]), int(g["m3"]), int(g["d3"])
    else:
        y, mo, d = int(g["y4"]), int(g["m4"]), int(g["d4"])
    try:
        return _dt.date(y, mo, d).isoformat()
    except ValueError:  # "February 30, 2024" is not a date: leave the text as it was
        return m.group(0)


def normalize_dates(text: str, protect_code: bool = True) -> str:
    """Rewrite unambiguous dates to ISO 8601: "March 5, 2024", "5 March 2024", "2024/03/05" and
    "2024年3月5日" all become "2024-03-05". Ambiguous numeric forms ("03/05/2024") are left alone.
    """
    if not _FOUR_DIGITS_RE.search(text):  # every accepted form has a 4-digit year
        return text
    return outside_code(text, lambda s: _DATE_RE.sub(_iso_date, s), protect_code)


def tidy_whitespace(text: str) -> str:
    """Drop trailing spaces per line, collapse 3+ blank lines to 2, strip the ends."""
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING_WS_RE.sub("", text)
    if "\n\n\n\n" in text:
        text = _BLANK_RUN_RE.sub("\n\n\n", text)
    return text.strip()
