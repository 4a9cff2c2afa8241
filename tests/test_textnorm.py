"""Text normalizers and the noise patterns shared by clean and validate_splits."""

from __future__ import annotations

import pytest

from tuneline.data import textnorm as tn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<p>Hello</p><p>world</p>", "\nHello\n\nworld\n"),
        ("line<br>next<br/>last", "line\nnext\nlast"),
        ("<b>bold</b> and <a href='x'>link</a>", "bold and link"),
        ("keep<script type='x'>alert(1)</script>this<style>p{color:red}</style>", "keepthis"),
        ("&lt;p&gt;escaped&lt;/p&gt;", "\nescaped\n"),
        ("&amp;lt;p&amp;gt;double&amp;lt;/p&amp;gt;", "\ndouble\n"),
        ("Tom &amp; Jerry&nbsp;&#39;s", "Tom & Jerry 's"),
        ("<!-- hidden --><div>shown</div>", "\nshown\n"),
        ("<td>a</td><td>b</td>", " a  b "),
        ("数学<span>公式</span>&lt;br&gt;结束", "数学公式\n结束"),
    ],
)
def test_strip_html_removes_markup(text: str, expected: str) -> None:
    assert tn.strip_html(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a < b and c > d",
        "if x<5 then y>3",
        "List<String> and Map<K, V>",
        "placeholders <URL> and <EMAIL> stay",
        "AT&T and R&D, a=1&notify=2",
        "数学里 3 < 5 成立",
    ],
)
def test_strip_html_leaves_text_that_only_looks_like_markup(text: str) -> None:
    assert tn.strip_html(text) == text
    assert not tn.HTML_TAG_RE.search(text)


def test_strip_html_leaves_code_alone_unless_told() -> None:
    text = "Use `<br>` to break. <b>Note</b>\n```html\n<p>&amp;</p>\n```"
    assert tn.strip_html(text) == "Use `<br>` to break. Note\n```html\n<p>&amp;</p>\n```"
    assert tn.strip_html(text, protect_code=False) == "Use `\n` to break. Note\n```html\n\n&\n\n```"


@pytest.mark.parametrize(
    ("text", "placeholder", "removed"),
    [
        ("see https://example.com/a?b=1.", "see <URL>.", "see."),
        ("(www.example.org) now", "(<URL>) now", "() now"),
        ("访问http://x.cn/a获取资料", "访问<URL>获取资料", "访问获取资料"),
        ("FTP://files.example.com/x, then", "<URL>, then", ", then"),
        ("go to http://a.b/c for details", "go to <URL> for details", "go to for details"),
    ],
)
def test_urls_placeholder_or_removed(text: str, placeholder: str, removed: str) -> None:
    assert tn.replace_urls(text, "placeholder", "<URL>") == placeholder
    assert tn.replace_urls(text, "remove") == removed
    assert tn.replace_urls(text, "keep") == text
    assert not tn.URL_RE.search(placeholder)


@pytest.mark.parametrize("text", ["no url here", "shttp://x is not a scheme", "a.www.b", "file.txt"])
def test_urls_not_found_where_there_are_none(text: str) -> None:
    assert tn.replace_urls(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail john.doe+x@mail.example.com now", "mail <EMAIL> now"),
        ("请联系bob@example.org谢谢", "请联系<EMAIL>谢谢"),
        ("A@B.CO, c_d@e-f.io", "<EMAIL>, <EMAIL>"),
    ],
)
def test_emails_replaced(text: str, expected: str) -> None:
    assert tn.replace_emails(text) == expected
    assert tn.replace_emails(text, "remove").count("@") == 0


@pytest.mark.parametrize("text", ["@handle", "a@b", "x @ y.com", "email me at home"])
def test_emails_not_found_where_there_are_none(text: str) -> None:
    assert tn.replace_emails(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234,567 people", "1234567 people"),
        ("$1,234.56", "$1234.56"),
        ("共1,000人", "共1000人"),
        ("1,234,567, 8 and 9", "1234567, 8 and 9"),
    ],
)
def test_numbers_thousands_groups(text: str, expected: str) -> None:
    assert tn.normalize_numbers(text) == expected


@pytest.mark.parametrize(
    "text",
    ["1,2", "1, 2, 3", "12,34,567", "1.234,56", "1,23", "1,2345", "version 3.1,234", "`f(1,234)`", "a1,234"],
)
def test_numbers_left_alone(text: str) -> None:
    assert tn.normalize_numbers(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on March 5, 2024.", "on 2024-03-05."),
        ("on 5 March 2024", "on 2024-03-05"),
        ("the 5th of Sept. 2023", "the 2023-09-05"),
        ("2024/03/05 and 2024-3-5", "2024-03-05 and 2024-03-05"),
        ("发布于2024年3月5日", "发布于2024-03-05"),
        ("2024 年 12 月 1 号", "2024-12-01"),
    ],
)
def test_dates_unambiguous_forms(text: str, expected: str) -> None:
    assert tn.normalize_dates(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "03/05/2024",
        "5/3/24",
        "February 30, 2024",
        "2023.7.22",
        "https://x.com/2024/03/05/post",
        "Total 5, 2024",
        "2024年13月5日",
    ],
)
def test_dates_ambiguous_or_invalid_left_alone(text: str) -> None:
    assert tn.normalize_dates(text) == text


def test_unicode_newlines_control() -> None:
    assert tn.normalize_unicode("ＡＢＣ１２３ ﬁ") == "ABC123 fi"
    assert tn.normalize_newlines("a\r\nb\rc\u2028d") == "a\nb\nc\nd"
    assert tn.strip_control("\ufeffa\u200bb\x00c\td\ne\x7f") == "abc\td\ne"
    # ZWJ builds emoji sequences: kept.
    assert tn.strip_control("👨\u200d👩") == "👨\u200d👩"


def test_tidy_whitespace() -> None:
    assert tn.tidy_whitespace("  a  \t\nb\n\n\n\n\n\nc  ") == "a\nb\n\n\nc"
    assert tn.tidy_whitespace("a\n\n\nb") == "a\n\n\nb"  # two blank lines are kept


def test_split_code_round_trips() -> None:
    text = "a `x` b ```\ncode `y`\n``` c"
    pieces = tn.split_code(text)
    assert "".join(seg for _, seg in pieces) == text
    assert [seg for is_code, seg in pieces if is_code] == ["`x`", "```\ncode `y`\n```"]


@pytest.mark.parametrize(
    "text",
    ["see www.example.com now", "see WWW.EXAMPLE.COM", "Www.x.org", "wWw.x.org", "WwW.x.org", "http://a.b",
     "FTP://files.x.org/a", "HTTPS://X.COM/Y", "访问http://x.cn获取"],
)
def test_url_precheck_lets_every_url_through(text: str) -> None:
    """replace_urls skips texts without "://" or a "www." in any case; every URL form must still reach
    the regex (a missed case would leave a URL in cleaned text)."""
    assert tn.may_hold_url(text)
    assert tn.URL_RE.search(text)
    assert "<URL>" in tn.replace_urls(text)
