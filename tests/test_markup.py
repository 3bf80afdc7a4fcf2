"""Leftover markup: real HTML tags go, text that merely contains < and > stays (issue 15 item 5)."""

from collections import Counter

import pytest

from kfm.data_pipeline.clean import clean_document, normalize_text
from kfm.data_pipeline.config import CleanConfig
from kfm.data_pipeline.markup import strip_markup

KEPT = [
    "if a<b and c>d then swap",
    "<Ctrl>+<Shift> 키를 누른 채 클릭합니다.",
    "<NumLock> 키가 꺼져 있으면 숫자 키패드가 방향키로 동작합니다.",
    "<User Profile> 폴더에 설정이 저장됩니다.",
    "x < y > z, and a<-b, and 3 <= 4 >= 2",
    "템플릿 인자는 vector<int> 와 map<string, int> 처럼 씁니다.",
    "메뉴 <보기> - <도구 모음> 을 고릅니다.",
    "Press <Code> then <Enter>.",
    "AT&T and R&D, x&notation; not an entity",
    "<b and c>",
    '=HYPERLINK("<a href=""https://a.b.com"">From α to ω</a>")',  # an orphan end tag: text
    # tags the text talks about (LibreOffice help, the sample corpus)
    "예를 들어 표제는 표제 텍스트의 앞 부분에 있는 <h1> 태그와 끝 부분에 있는 </h1> 태그로 표시됩니다. 하지만 줄 바꿈을 "
    "나타내는 <br>이나 그래픽 연결을 나타내는 <img ...> 등의 태그는 단독으로 사용됩니다.",
    "부동 프레임은 <IFRAME>와 </IFRAME> 태그에 묶입니다.",
    "목록 항목은 HTML 태그 <OPTION>에 해당합니다.\n비어 있지 않은 텍스트가 값 목록 (<OPTION VALUE=...>)의 선택한 위치에 "
    "있으면 전송됩니다. 그렇지 않은 경우 (<OPTION>) 콘트롤에 표시된 텍스트가 전송됩니다.",
    "For example, titles are marked by the tags <h1> at the beginning and </h1> at the end of the title. Some tags "
    "only appear on their own such as <br> for a line break or <img ...> to link a graphic.",
]


@pytest.mark.parametrize("text", KEPT)
def test_text_with_angle_brackets_is_kept(text):
    assert strip_markup(text) == (text, 0, 0)


REAL_HTML = [
    ("<p>모든 국민은 <b>법 앞에</b> 평등하다.</p>", "모든 국민은 법 앞에 평등하다."),
    ('셀을 <a href="cells.html" class=\'link\' target=_blank>선택</a>합니다.', "셀을 선택합니다."),
    ("첫 줄<br/>둘째 줄<BR>셋째 줄<br />", "첫 줄둘째 줄셋째 줄"),
    ('<img src=chart.png alt="그림 1">그림 설명', "그림 설명"),
    ("앞<!-- 주석 <b>굵게</b> -->뒤", "앞뒤"),
    ('<input type="checkbox" checked disabled> 자동 저장', " 자동 저장"),
    ("<script>var x = '<b>';</script>본문<style>p { color: red }</style>", "본문"),
    ("<DIV ALIGN=center>가운데</DIV>", "가운데"),
    ("<p>첫째 &amp; 둘째 &#44032;&#xAC00; &lt;Ctrl&gt;</p>", "첫째 & 둘째 가가 <Ctrl>"),
    ("<td><span>if a<b and c>d</span></td>", "if a<b and c>d"),
]


@pytest.mark.parametrize("html, text", REAL_HTML)
def test_real_html_tags_are_removed(html, text):
    got, tags, chars = strip_markup(html)
    assert got == text
    assert tags > 0 and chars == len(html) - len(got) - _entity_shrink(html)


def _entity_shrink(html: str) -> int:
    """Characters that decoding the entities of ``html`` saves (they are not counted as markup)."""
    import re

    return sum(len(m.group(0)) - 1 for m in re.finditer(r"&[#\w]+;", re.sub(r"<!--.*?-->", "", html)))


def test_removed_markup_is_counted_per_document():
    counts = Counter()
    text = clean_document("<p>대한민국은 민주공화국이다. <b>대한민국의</b> 주권은 국민에게 있다.</p>\n"
                          "<Ctrl>+<Shift> 키를 누른 채로 셀을 클릭하면 범위가 선택됩니다.", "ko", CleanConfig(), counts)
    assert "<Ctrl>+<Shift> 키를" in text and "<b>" not in text
    assert counts["markup_tags_removed"] == 4 and counts["markup_chars_removed"] == len("<p><b></b></p>")


def test_code_keeps_its_markup():
    assert normalize_text("if a<b and c>d: return '<p>'", "code") == "if a<b and c>d: return '<p>'"
