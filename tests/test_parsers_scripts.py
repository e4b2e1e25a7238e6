"""Game-script parsers: write a small script in each format, parse it, check what a writer would."""

from __future__ import annotations

import codecs
import textwrap
from pathlib import Path

import openpyxl
import pytest

from ingest.errors import ParseError
from ingest.parsers import parser_for
from ingest.parsers.dialogue import dialogue_section, split_speaker
from ingest.types import Section


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def parse_file(path: Path) -> list[Section]:
    """Parse a file the way ingestion does: the registry picks the module, binary ones get bytes."""
    module = parser_for(path.suffix)
    data = path.read_bytes()
    return module.parse(data if getattr(module, "BINARY", False) else data.decode("utf-8"), str(path))


def parse_error(path: Path) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse_file(path)
    assert caught.value.path == str(path)
    return caught.value


def lines(section: Section) -> list[str]:
    return section.text.split("\n")


# --- shared dialogue helpers -------------------------------------------------


def test_speaker_lines_and_narration():
    assert split_speaker("Maren: Mind the bilge.") == ("Maren", "Mind the bilge.")
    assert split_speaker("Old Tom: Aye.") == ("Old Tom", "Aye.")
    assert split_speaker("玛伦：小心船底。") == ("玛伦", "小心船底。")
    assert split_speaker("note: this is narration") == (None, "note: this is narration")
    assert split_speaker("See https://example.com for more") == (None, "See https://example.com for more")
    assert split_speaker("The four of them said: nothing") == (None, "The four of them said: nothing")


def test_dialogue_section_lists_speakers_and_omits_the_key_without_any():
    section = dialogue_section([("MAREN", "One."), (None, "The tide turns."), ("Wren", "Two.")],
                               {"node": "N", "speaker": "stale"})
    assert section.text == "Maren: One.\nThe tide turns.\nWren: Two."
    assert section.meta == {"node": "N", "title": "N", "speaker": ["Maren", "Wren"]}
    assert section.dialogue
    narration = dialogue_section([(None, "Only the sea.")], {"node": "N"})
    assert "speaker" not in narration.meta
    assert dialogue_section([(None, "  ")], {}) is None


# --- Yarn -------------------------------------------------------------------

YARN = """
title: Crossing
tags: chapter:1 region:Saltreach ferry
colorID: 0
---
// a writer's note
Maren: Step in. Mind the bilge, tidewalker, and keep your hands inside the boat. #line:a1b2c3
Wren: Is this the ferry to Greyhithe? #line:d4 #mood:curious
<<set $paid to false>>
-> Pay the fare. <<if $coins > 2>>
    <<set $paid to true>>
    Maren: Good. Sit low.
-> Wren: I'll tell a story instead.
The boat rocks.
<<jump LanternQuay>>
===
title: LanternQuay
tags: chapter:2
---
Idris: The Kessel Glass is gone.
===
"""


def test_yarn_nodes_speakers_and_metadata(tmp_path):
    crossing, quay = parse_file(write(tmp_path, "harbour.yarn", YARN))
    assert lines(crossing) == [
        "Maren: Step in. Mind the bilge, tidewalker, and keep your hands inside the boat.",
        "Wren: Is this the ferry to Greyhithe?",
        "(choice) Pay the fare.",
        "Maren: Good. Sit low.",
        "Wren: (choice) I'll tell a story instead.",
        "The boat rocks.",
    ]
    assert crossing.dialogue
    assert crossing.meta["node"] == "Crossing"
    assert crossing.meta["chapter"] == 1
    assert crossing.meta["region"] == "Saltreach"
    assert crossing.meta["tags"] == ["ferry"]
    assert crossing.meta["speaker"] == ["Maren", "Wren"]
    assert quay.meta["node"] == "LanternQuay"
    assert quay.meta["chapter"] == 2
    assert quay.meta["speaker"] == ["Idris"]
    assert "<<" not in crossing.text and "#" not in crossing.text and "//" not in crossing.text


def test_yarn_file_tags_apply_to_every_node(tmp_path):
    path = write(tmp_path, "tagged.yarn", """
        # region:Mirewood
        title: Start
        ---
        Nessa: Two bits a jar.
        ===
    """)
    [section] = parse_file(path)
    assert section.meta["region"] == "Mirewood"
    assert section.meta["node"] == "Start"


def test_yarn_unclosed_node_names_its_first_line(tmp_path):
    path = write(tmp_path, "open.yarn", """
        title: A
        ---
        Maren: Fine.
        ===

        title: Broken
        tags: chapter:1
        ---
        Maren: Where is the end?
    """)
    error = parse_error(path)
    assert error.line == 6
    assert "node 'Broken' is not closed with ===" in error.reason


def test_yarn_body_without_title(tmp_path):
    path = write(tmp_path, "untitled.yarn", """
        tags: chapter:1
        ---
        Maren: Who am I?
        ===
    """)
    assert parse_error(path).line == 2


def test_yarn_text_outside_a_node(tmp_path):
    path = write(tmp_path, "stray.yarn", """
        title: A
        ---
        ===
        Old Maren: stray line
    """)
    assert parse_error(path).line == 4


# --- ink --------------------------------------------------------------------

INK = """
# chapter: 2
# region: Saltreach
VAR trust = 0
// opening divert
-> hall

=== hall ===
Ysolde: Nine oars on the wall, nine seats at the table. I write what is said. # mood: formal
Idris: The glass was taken from our own strongroom.<> -> hall.blockade
~ trust = trust + 1
* [Listen to the Second Oar] -> hall.blockade
+ (watch) [Watch Sefa] closely -> END
* * Nested choice
- They fall silent. # ambient
{ trust > 0:
    - Idris: You have my trust.
    - else: Nobody trusts you.
}
/* a long
   block comment */
Sefa: {The lamp|The Light} was {dimmed: dimmed|lit} {trust} times.

= blockade
Aurel: Close the Mirewood creeks. -> DONE

=== function helper(x) ===
~ return x + 1
This is not story text.

=== farewell ==
Sefa: Tallow Rock has a lamp.
-> END
"""


def test_ink_knots_stitches_choices_and_tags(tmp_path):
    hall, blockade, farewell = parse_file(write(tmp_path, "council.ink", INK))
    assert lines(hall) == [
        "Ysolde: Nine oars on the wall, nine seats at the table. I write what is said.",
        "Idris: The glass was taken from our own strongroom.",
        "(choice) Listen to the Second Oar",
        "(choice) Watch Sefa closely",
        "(choice) Nested choice",
        "They fall silent.",
        "Idris: You have my trust.",
        "Nobody trusts you.",
        "Sefa: The lamp / The Light was dimmed / lit trust times.",
    ]
    assert hall.meta["knot"] == "hall" and "stitch" not in hall.meta
    assert hall.meta["chapter"] == 2 and hall.meta["region"] == "Saltreach"
    assert hall.meta["mood"] == "formal"
    assert hall.meta["tags"] == ["ambient"]
    assert hall.meta["speaker"] == ["Idris", "Sefa", "Ysolde"]
    assert blockade.meta["knot"] == "hall" and blockade.meta["stitch"] == "blockade"
    assert blockade.text == "Aurel: Close the Mirewood creeks."
    assert blockade.meta["chapter"] == 2 and "mood" not in blockade.meta
    assert farewell.meta["knot"] == "farewell"
    for section in (hall, blockade, farewell):
        assert "->" not in section.text and "{" not in section.text and "#" not in section.text
        assert "not story text" not in section.text


@pytest.mark.parametrize("body, line", [
    ("=== start ===\nMaren: Hello.\n===\nMore.\n", 3),
    ("=== start ===\nMaren: The tide is {late.\n", 2),
    ("=== start ===\nMaren: The tide is late}.\n", 2),
    ("=== start ===\n{ trust > 0:\n    Idris: Fine.\n", 2),
    ("=== start ===\nMaren: Hi.\n/* never closed\n", 3),
    ("=== start ===\n= \nMaren: Hi.\n", 2),
])
def test_ink_malformed_lines(tmp_path, body, line):
    assert parse_error(write(tmp_path, "broken.ink", body)).line == line


# --- Fountain ---------------------------------------------------------------

FOUNTAIN = """
Title: The Dimmed Light
Credit: Written by
    the Lore KB team
Chapter: 3
Region: Fellstack

FADE IN:

INT. ORRIN LIGHT, LAMP ROOM - NIGHT #1#

The great lamp turns behind three rings of tideglass. SEFA ORRIN, fifties, sits at a desk.

SEFA
Eleventh of Saltmonth. Wind north-east.
One visitor, wet.

WREN (V.O.)
(softly)
You knew I would come.

/* SEFA
A cut line. */

CUT TO:

.TALLOW ROCK LANDING

[[check the tide tables]]
@McCLANE
Whoever that is.

AUREL THANE (CONT'D)
Let the past stay **drowned**.

> THE END <
"""


def test_fountain_scenes_cues_and_title_page(tmp_path):
    lamp_room, landing = parse_file(write(tmp_path, "lighthouse.fountain", FOUNTAIN))
    assert lamp_room.meta["scene"] == "INT. ORRIN LIGHT, LAMP ROOM - NIGHT"
    assert lines(lamp_room) == [
        "The great lamp turns behind three rings of tideglass. SEFA ORRIN, fifties, sits at a desk.",
        "Sefa: Eleventh of Saltmonth. Wind north-east. One visitor, wet.",
        "Wren: (softly) You knew I would come.",
    ]
    assert lamp_room.meta["speaker"] == ["Sefa", "Wren"]
    assert lamp_room.meta["title"] == lamp_room.meta["scene"]  # the scene names the section
    assert lamp_room.meta["story"] == "The Dimmed Light"  # the title page names the script
    assert lamp_room.meta["credit"] == "Written by the Lore KB team"
    assert lamp_room.meta["chapter"] == 3
    assert lamp_room.meta["region"] == "Fellstack"
    assert landing.meta["scene"] == "TALLOW ROCK LANDING"
    assert lines(landing) == [
        "McCLANE: Whoever that is.",
        "Aurel Thane: Let the past stay drowned.",
        "THE END",
    ]
    assert landing.meta["speaker"] == ["Aurel Thane", "McCLANE"]
    assert "CUT TO" not in lamp_room.text + landing.text
    assert "cut line" not in lamp_room.text and "tide tables" not in landing.text


def test_fountain_without_title_page_or_transitions(tmp_path):
    path = write(tmp_path, "short.fountain", """
        EXT. HARBOUR - DAWN

        MAREN
        Tide's late.
    """)
    [section] = parse_file(path)
    assert section.meta == {"scene": "EXT. HARBOUR - DAWN", "title": "EXT. HARBOUR - DAWN", "speaker": ["Maren"]}
    assert section.text == "Maren: Tide's late."


def test_fountain_unclosed_boneyard(tmp_path):
    path = write(tmp_path, "boneyard.fountain", """
        INT. HOUSE - DAY

        MAREN
        Hello.

        /* cut from here
        to the end
    """)
    assert parse_error(path).line == 6


# --- Twee -------------------------------------------------------------------

TWEE = """
:: StoryTitle
Market Day in Greyhithe

:: StoryData
{
  "ifid": "5B8530EF-10B0-486D-A6AC-9BCE72BC0359",
  "format": "Harlowe"
}

:: UserScript [script]
window.secret = "not canon";

:: Gull Market [chapter:1 region:Saltreach market] {"position":"100,100","size":"100,100"}
The Gull Market fills Lantern Quay on every fifth day.
(set: $met to (a: "Nessa", "Wren"))
Nessa: Fen-fever draught, salt-burn salve. Two bits a jar, traveller.
<<if $met>>Wren: We met before.<</if>>
(if: $met)[Nessa: Back again?]
Follow the [[gulls->Dock]] or stay.
[[Ask Nessa about the whistle->Whistle]]
[[Dock<-Go to the dock]]
[[Back|Gull Market]]
[[Whistle]]

:: Whistle
Nessa: Three notes, low-high-low.
"""


def test_twee_passages_links_macros_and_story(tmp_path):
    market, whistle = parse_file(write(tmp_path, "market.twee", TWEE))
    assert lines(market) == [
        "The Gull Market fills Lantern Quay on every fifth day.",
        "Nessa: Fen-fever draught, salt-burn salve. Two bits a jar, traveller.",
        "Wren: We met before.",
        "Nessa: Back again?",
        "Follow the gulls or stay.",
        "(choice) Ask Nessa about the whistle",
        "(choice) Go to the dock",
        "(choice) Back",
        "(choice) Whistle",
    ]
    assert market.meta["node"] == "Gull Market"
    assert market.meta["story"] == "Market Day in Greyhithe"
    assert market.meta["chapter"] == 1 and market.meta["region"] == "Saltreach"
    assert market.meta["tags"] == ["market"]
    assert market.meta["speaker"] == ["Nessa", "Wren"]
    assert whistle.meta == {"story": "Market Day in Greyhithe", "node": "Whistle", "title": "Whistle",
                            "speaker": ["Nessa"]}
    assert "not canon" not in market.text + whistle.text


@pytest.mark.parametrize("text, line", [
    (":: StoryData\n{\n  \"ifid\": \"X\",\n}\n\n:: Start\nHi.\n", 4),
    (":: Start\nHi.\n\n:: [tag]\nNo name.\n", 4),
    ("Some stray text\n:: Start\nHi.\n", 1),
    (":: Start\nHi. /* never closed\nstill\n", 2),
])
def test_twee_malformed(tmp_path, text, line):
    assert parse_error(write(tmp_path, "broken.twee", text)).line == line


# --- localization tables ----------------------------------------------------

CSV = (
    "string_id,context,en,zh-Hans,fr,speaker,chapter,region,,\n"
    'ui.fare,Ferry prompt,"Pay the fare, or tell a story?",付船费，还是讲故事？,,,1,Saltreach,,\n'
    'dlg.maren.1,Greeting,"Step in.\nMind the bilge.",上船吧。,Montez.,MAREN,1,Saltreach,,\n'
    ",,,,,,,,,\n"
)


def test_csv_gives_one_section_per_language(tmp_path):
    path = tmp_path / "strings.csv"
    path.write_bytes(codecs.BOM_UTF8 + CSV.encode("utf-8"))
    sections = parse_file(path)
    by_key_lang = {(s.meta["key"], s.meta["lang"]): s for s in sections}
    assert sorted(by_key_lang) == [
        ("dlg.maren.1", "en"), ("dlg.maren.1", "fr"), ("dlg.maren.1", "zh"),
        ("ui.fare", "en"), ("ui.fare", "zh"),
    ]
    fare = by_key_lang[("ui.fare", "en")]
    assert fare.text == "ui.fare: Pay the fare, or tell a story?"
    assert fare.meta == {"key": "ui.fare", "title": "ui.fare", "lang": "en", "locale": "en", "context": "Ferry prompt",
                         "chapter": 1, "region": "Saltreach"}
    zh = by_key_lang[("ui.fare", "zh")]
    assert zh.meta["locale"] == "zh-Hans"
    maren = by_key_lang[("dlg.maren.1", "en")]
    assert maren.text == "Maren: Step in. Mind the bilge."
    assert maren.meta["speaker"] == ["Maren"]
    assert maren.meta["key"] == "dlg.maren.1"


def test_tsv_in_utf16_with_key_column_not_first(tmp_path):
    path = tmp_path / "strings.tsv"
    path.write_bytes("notes\tKey\ten\tzh-TW\n\tplace.greyhithe\tGreyhithe\t灰港\n".encode("utf-16"))
    en, zh = parse_file(path)
    assert (en.meta["key"], en.meta["lang"], en.text) == ("place.greyhithe", "en", "place.greyhithe: Greyhithe")
    assert (zh.meta["lang"], zh.meta["locale"]) == ("zh", "zh-TW")


def test_xlsx_sheets(tmp_path):
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Items"
    sheet.append(["key", "en", "zh", "chapter"])
    sheet.append(["item.glass", "The Kessel Glass", "凯瑟尔玻璃", 2])
    sheet.append(["item.empty", None, None, None])
    path = tmp_path / "items.xlsx"
    workbook.save(path)
    en, zh = parse_file(path)
    assert en.text == "item.glass: The Kessel Glass"
    assert en.meta == {"sheet": "Items", "key": "item.glass", "title": "item.glass", "lang": "en", "locale": "en", "chapter": 2}
    assert zh.meta["lang"] == "zh"


def test_csv_row_with_wrong_field_count_is_read_and_warned_with_its_line(tmp_path, caplog):
    path = write(tmp_path, "odd.csv", 'key,en,zh\na,"two\nlines",二\nb,only two\nc,three,三,extra\n')
    sections = parse_file(path)
    assert [s.text for s in sections] == ["a: two lines", "a: 二", "b: only two", "c: three", "c: 三"]
    warnings = [record.getMessage() for record in caplog.records if record.name == "ingest"]
    assert warnings == [f"{path}:4: row has 2 fields but the header has 3; missing cells read as empty",
                        f"{path}:5: row has 4 fields but the header has 3; extra ones ignored"]


def test_loc_table_that_is_not_text_or_workbook(tmp_path):
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes("key,fr\na,café\n".encode("latin-1"))
    parse_error(csv_path)
    xlsx_path = tmp_path / "fake.xlsx"
    xlsx_path.write_bytes(b"not a zip")
    parse_error(xlsx_path)


# --- JSON -------------------------------------------------------------------


def test_json_scene_object(tmp_path):
    path = write(tmp_path, "roost.json", """
        {
          "scene": "The Roost",
          "chapter": 2,
          "region": "Mirewood",
          "notes": {"ignored": true},
          "turns": [
            {"speaker": "Nessa", "text": "No blades up here.", "emotion": "calm"},
            {"speaker": null, "text": "Rain on the reeds."},
            {"speaker": "Dace", "text": "Especially not mine.\\nI'm Dace Harrow."}
          ]
        }
    """)
    [section] = parse_file(path)
    assert lines(section) == ["Nessa: No blades up here.", "Rain on the reeds.",
                              "Dace: Especially not mine. I'm Dace Harrow."]
    assert section.meta == {"scene": "The Roost", "title": "The Roost", "chapter": 2, "region": "Mirewood",
                            "speaker": ["Dace", "Nessa"]}
    assert section.dialogue


def test_json_list_of_turns_and_list_of_scenes(tmp_path):
    [turns] = parse_file(write(tmp_path, "turns.json", '[{"speaker": "Maren", "text": "Aye."}]'))
    assert turns.text == "Maren: Aye." and turns.meta == {"speaker": ["Maren"]}
    scenes = parse_file(write(tmp_path, "scenes.json", """
        [{"scene": "One", "turns": [{"speaker": "Maren", "text": "First."}]},
         {"scene": "Two", "chapter": "3", "turns": [{"speaker": "Wren", "text": "Second."}]}]
    """))
    assert [s.meta["scene"] for s in scenes] == ["One", "Two"]
    assert scenes[1].meta["chapter"] == 3


def test_json_other_documents_flatten_to_lines(tmp_path):
    [section] = parse_file(write(tmp_path, "items.json", """
        {"items": [{"name": "Reed-whistle", "price": 2, "rare": false}], "region": "Mirewood"}
    """))
    assert lines(section) == ["items[0].name: Reed-whistle", "items[0].price: 2",
                              "items[0].rare: false", "region: Mirewood"]
    assert section.meta == {"title": "items"}
    assert not section.dialogue


def test_json_invalid_and_malformed_turns(tmp_path):
    assert parse_error(write(tmp_path, "bad.json", '{\n  "scene": "x",\n  "turns": [\n}\n')).line == 4
    error = parse_error(write(tmp_path, "missing.json",
                              '{"turns": [{"speaker": "A", "text": "ok"}, {"speaker": "B"}]}'))
    assert "turns[1]" in error.reason
    error = parse_error(write(tmp_path, "nested.json",
                              '[{"turns": []}, {"turns": [{"speaker": "B", "words": "x"}]}]'))
    assert "[1].turns[0]" in error.reason


# --- across formats ----------------------------------------------------------


@pytest.mark.parametrize("name, text", [
    ("a.yarn", YARN), ("a.ink", INK), ("a.fountain", FOUNTAIN), ("a.twee", TWEE),
])
def test_every_speaker_line_names_a_listed_speaker(tmp_path, name, text):
    for section in parse_file(write(tmp_path, name, text)):
        speakers = section.meta.get("speaker", [])
        assert isinstance(speakers, list)
        for line in lines(section):
            speaker, _ = split_speaker(line)
            if speaker and not line.startswith("(choice)"):
                assert speaker in speakers, line
