"""Sentence choice for extractive answers (kb/extract.py), and `kb ask --json` on a small world of the test's own."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3

import pytest

from ingest.tokens import count_tokens
from kb import KnowledgeBase
from kb.extract import (
    ANALYSIS_VERSION,
    RELATED_FORM,
    analysed,
    answer_kinds,
    article_subject,
    asks_what_followed,
    choose,
    forget_analyses,
    has_evidence,
    is_fragment,
    leans_on_previous,
    names_the_doer,
    passage_coverage,
    question_terms,
    question_type,
    remember,
    render,
    split_sentences,
    stored_analysis,
)
from kb.lexical import tokens
from kb.postings import index_path
from kb.retrieve import Corpus
from tests.conftest import invoke, invoke_json


def flat(term: str) -> float:
    return 1.0


def sentences(text: str) -> list[str]:
    return [text[start:end] for start, end in split_sentences(text)]


WARDENS = ("The Brine Wardens keep the northern lights burning through the winter storms. "
           "Their founder, Osric Vane, lost both hands to frostbite in the winter of 212 TC.\n"
           "Wardens wear grey.")


@pytest.mark.parametrize("question, kind", [
    ("Who founded the Brine Wardens?", "person"),
    ("When did the Great Drowning happen?", "date"),
    ("In what year was the Archive founded?", "date"),
    ("How many great kilns are there on Cinderholm?", "number"),
    ("Where does Maren keep her ferry?", "place"),
    ("What did the man who built the tower want?", None),
    ("Why did the Council vote?", None),
    ("谁在潮历118年创立了玻璃匠公会？", "person"),
    ("华氏温标是哪一人所制定的？", "person"),
    ("沉没档案馆是哪一年建立的？", "date"),
    ("长退潮节是什么时候？", "date"),
    ("灰港大约有多少人口？", "number"),
    ("长退潮节一共持续几天？", "number"),
    ("科兰丁浅海的首都是哪里？", "place"),
    ("盐缚者会逐渐失去哪种感觉？", None),
    ("What colour is the tideglass lantern?", "colour"),
    ("潮狐的尾巴是什么颜色？", "colour"),
    ("How did the cook feel when the king called him in?", "feeling"),
    ("How will the widow feel after the pig is cured?", "feeling"),
])
def test_question_type_says_what_is_asked_for(question, kind):
    assert question_type(question) == kind


def test_founder_answers_who_founded():
    quotes = choose("Who founded the Brine Wardens?", [(1, WARDENS, "Brine Wardens")], flat)
    assert "Osric Vane" in quotes[0].text
    assert "Wardens wear grey" not in quotes[0].text


def test_a_sentence_opening_with_a_pronoun_brings_the_one_it_leans_on():
    assert leans_on_previous("Their founder, Osric Vane, lost both hands.")
    assert leans_on_previous("他于1912年创办了公学。")
    assert not leans_on_previous("Osric Vane lost both hands.")
    [first, *_] = choose("Who founded the Brine Wardens?", [(1, WARDENS, "")], flat)
    assert first.text.startswith("The Brine Wardens keep the northern lights burning")
    assert first.text.endswith("in the winter of 212 TC.")


def test_splits_keep_abbreviations_initials_and_quoted_speech_whole():
    text = ('Mr. Vane met Dr. Holt at St. Ives in the spring. J. R. Holt wrote it down the same night. '
            '"Go!" cried the King to his huntsmen. The men ran as fast as they could.')
    assert sentences(text) == [
        "Mr. Vane met Dr. Holt at St. Ives in the spring.",
        "J. R. Holt wrote it down the same night.",
        '"Go!" cried the King to his huntsmen.',
        "The men ran as fast as they could.",
    ]


def test_splits_drop_list_markers_and_headings_and_undo_line_wraps():
    text = ("## Customs\n"
            "- Every warden carries a lantern of tideglass at night.\n"
            "- Wardens never sail alone past the outer reefs.\n"
            "Once upon a time there was a poor woman, who lived in a wretched hut far\n"
            "away from the village, with her three daughters.")
    assert sentences(text) == [
        "Every warden carries a lantern of tideglass at night.",
        "Wardens never sail alone past the outer reefs.",
        "Once upon a time there was a poor woman, who lived in a wretched hut far\n"
        "away from the village, with her three daughters.",
    ]
    [quote] = choose("Where did the poor woman live?", [(1, text.split("\n", 3)[3], "")], flat)
    assert quote.text == ("Once upon a time there was a poor woman, who lived in a wretched hut far "
                          "away from the village, with her three daughters.")


def test_a_fragment_is_never_quoted_alone():
    assert is_fragment("Wardens wear grey.")
    assert not is_fragment("Every warden carries a lantern of tideglass.")
    text = "Wardens wear grey. Every warden carries a lantern of tideglass at night."
    assert sentences(text) == [text]
    alone = "Brine Wardens\nNo. 4 is the oldest tower of the wardens in the isles.\nWardens wear grey."
    assert sentences(alone) == ["No. 4 is the oldest tower of the wardens in the isles."]


def test_chinese_sentences_split_after_closing_quotes_not_at_semicolons():
    text = "他说：「我们走吧。」众人随即出发；天色已晚。灰港是科兰丁浅海的首都，人口约两万三千。"
    assert sentences(text) == ["他说：「我们走吧。」", "众人随即出发；天色已晚。", "灰港是科兰丁浅海的首都，人口约两万三千。"]


def test_near_identical_sentences_are_said_once():
    row = "The Orrin Light can be seen twenty-two miles away on a clear night."
    chunks = [(1, row, ""), (2, row + " ", ""), (3, "The Orrin Light can be seen twenty-two miles away on a clear night!", "")]
    quotes = choose("How far away can the Orrin Light be seen?", chunks, flat)
    assert [q.n for q in quotes] == [1]


def test_best_sentence_first_and_at_most_three():
    text = " ".join(f"The harbour of Greyhithe has {word} piers along the old wall." for word in
                    ("many", "some", "few", "wide", "narrow"))
    text += " The capital of the Corrandine Shallows is Greyhithe, on Saltreach."
    quotes = choose("What is the capital of the Corrandine Shallows?", [(1, text, "")], flat)
    assert quotes[0].text == "The capital of the Corrandine Shallows is Greyhithe, on Saltreach."
    assert len(quotes) == 3
    assert render(quotes[:1]) == "The capital of the Corrandine Shallows is Greyhithe, on Saltreach. [1]"


def test_the_next_quote_adds_what_the_first_did_not_say():
    """After a sentence that names the (rare) subject, the one that holds the rest of the question
    beats another sentence about the subject alone."""
    text = ("The Brine Wardens patrol the salt flats. The Brine Wardens meet at the lighthouse. "
            "The oath of silence binds every member for life.")
    rare_subject = {"brine": 10.0, "warden": 10.0}.get
    quotes = choose("What oath of silence do the Brine Wardens take?", [(1, text, "")],
                    lambda term: rare_subject(term, 1.0), 2)
    assert [q.text for q in quotes] == ["The Brine Wardens patrol the salt flats.",
                                        "The oath of silence binds every member for life."]


def test_an_agent_noun_names_the_doer_of_the_act_asked_about():
    assert names_the_doer("The poisoner is Nessa Vell.", "Who poisoned Idris Callow?")
    assert names_the_doer("Their founder, Osric Vane, lost both hands.", "Who founded the Brine Wardens?")
    assert not names_the_doer("Wren finds that Idris was poisoned.", "Who poisoned Idris Callow?")
    assert not names_the_doer("The order came by river.", "Who poisoned Idris Callow?")
    text = "Wren saw that the cup was poisoned. The poisoner tipped reed into the cup: Nessa Vell."
    assert choose("Who poisoned the cup?", [(1, text, "")], flat, 1)[0].text.startswith("The poisoner")


def test_a_feeling_is_read_word_by_word_as_the_case_blind_pattern_reads_it():
    """A feeling is looked up word by word (the pattern tried at every character cost 70 µs a sentence); a word
    outside ASCII goes to the pattern, whose case-blind match takes the long s for an s, as lower() does not."""
    question = "How did the happy miller feel when the river rose?"
    for sentence, held in (("She was ANGRY at last.", True), ("Glad!", True), ("sad-eyed", True),
                           ("ſad and weary", True), ("a sad_face", False), ("The miller was happy.", False)):
        assert has_evidence(sentence, "feeling", question) is held, sentence


def test_the_kind_asked_for_picks_the_sentence_that_holds_it():
    text = ("The Great Drowning is remembered in every harbour song of the Shallows. "
            "The Great Drowning came in 203 TC and took the old capital.")
    assert choose("When did the Great Drowning happen?", [(1, text, "")], flat, 1)[0].text.endswith("203 TC and took the old capital.")
    zh = "玻璃匠公会历史悠久，以烧制潮汐玻璃闻名。玻璃匠公会由奥斯克·布兰德创立，总部设在灰港。"
    assert "奥斯克·布兰德" in choose("谁创立了玻璃匠公会？", [(1, zh, "")], flat, 1)[0].text


def test_a_colour_question_picks_the_sentence_that_names_a_colour():
    zh = "潮狐是盐沼中的一种小兽。潮狐的尾巴很长，能卷住芦苇。潮狐的尾巴尖呈银灰色。"
    assert choose("潮狐的尾巴是什么颜色？", [(1, zh, "")], flat, 1)[0].text == "潮狐的尾巴尖呈银灰色。"
    text = "The tideglass lantern hangs at the bow of every boat. The tideglass lantern burns a pale green."
    assert choose("What colour is the tideglass lantern?", [(1, text, "")], flat, 1)[0].text.endswith("pale green.")
    # the colour word is still the question's content: canon that never names a colour does not cover it
    assert passage_coverage("What colour is the tideglass lantern?", "The tideglass lantern hangs at the bow.", "",
                            flat) == pytest.approx(2 / 3)


def test_a_how_tall_question_keeps_tall_as_its_content():
    text = ("The Orrin Light stands on Tallow Rock and was lit in 331 TC. "
            "It is 58 metres tall and burns seal oil behind three tideglass rings.")
    def rare_tall(term):  # as in the sample world, where few chunks say "tall"
        return 3.0 if term == "tall" else 1.0
    assert "58 metres tall" in choose("How tall is the Orrin Light?", [(1, text, "")], rare_tall, 1)[0].text
    assert question_type("How tall is the Orrin Light?") == "number"
    assert passage_coverage("How tall is the Orrin Light?", "The Orrin Light stands on a rock.", "",
                            flat) == pytest.approx(2 / 3)  # "tall" is asked for, and this chunk lacks it


GOOSE = ("The eldest sister waited until Dullhead left the room and caught hold of the goose by its wing. "
         "Her fingers stuck fast to the feathers, and she could not pull her hand away. "
         "The next morning Dullhead set out with the goose under his arm.")


@pytest.mark.parametrize("question, followed", [
    ("What happened when the eldest sister caught hold of the goose?", True),
    ("What did the smith do after the bannock ran away?", True),
    ("How did the cook feel when the king called him in?", True),
    ("What happened to the goose?", True),
    ("Who caught hold of the goose?", False),
    ("When did the sister catch the goose?", False),
    ("What did the sister catch?", False),
])
def test_what_followed_an_event_is_asked_with_what_happened_or_a_when_clause(question, followed):
    assert asks_what_followed(question) is followed


def test_what_followed_an_event_is_quoted_with_the_sentence_after_it():
    quote = choose("What happened when the eldest sister caught hold of the goose?", [(1, GOOSE, "")], flat, 1)[0]
    assert quote.text.startswith("The eldest sister") and quote.text.endswith("pull her hand away.")
    assert choose("Who caught hold of the goose by its wing?", [(1, GOOSE, "")], flat, 1)[0].text.endswith("by its wing.")


def test_a_question_about_a_feeling_picks_the_sentence_that_names_one():
    text = ("The cook served the king's supper in the great hall. Afterwards the cook was proud of the king's supper. "
            "The hall was lit with a hundred candles.")
    assert choose("How did the cook feel about the king's supper?", [(1, text, "")], flat, 1)[0].text.startswith("Afterwards")


def test_what_happened_and_how_did_x_feel_ask_and_are_not_content():
    # the answer to "What happened when …?" seldom says "happened", nor the one to "How did X feel?" "feel"
    assert "happen" not in question_terms("What happened when the tide turned?", flat)
    assert "feel" not in question_terms("How did the smith feel when the bell cracked?", flat)
    assert "feel" in question_terms("What did the smith feel in the dark?", flat)  # not a feeling asked for
    text = ("The smith reached up to feel the great bell of the tower. Then the bell cracked in the frost. "
            "The smith was afraid and sat down in the snow.")
    assert choose("How did the smith feel?", [(1, text, "")], flat, 1)[0].text.startswith("The smith was afraid")


def test_chinese_words_for_the_same_thing_count_as_the_question_word():
    text = "潮港史官林远，字子文，生于潮港东城。林远一生著述甚多，晚年隐居山中。卒于潮汐历二百零三年。"
    assert choose("林远是在什么时候去世的？", [(1, text, "")], flat, 1)[0].text == "卒于潮汐历二百零三年。"
    salt = "赤盐是潮港出产的一种矿盐，色泽微红。赤盐被用于腌制海鱼和鞣制皮革。赤盐的产量逐年下降。"
    assert choose("赤盐有什么用途？", [(1, salt, "")], flat, 1)[0].text == "赤盐被用于腌制海鱼和鞣制皮革。"
    hobby = "林远，字子文，潮港人。林远曾任潮港史官。林远非常喜欢垂钓。"
    assert choose("林远有什么爱好？", [(1, hobby, "")], flat, 1)[0].text == "林远非常喜欢垂钓。"
    burger = "华堡是汉堡王的招牌食品。华堡包括牛肉、生菜和番茄。"
    assert choose("华堡包含哪些食材？", [(1, burger, "")], flat, 1)[0].text == "华堡包括牛肉、生菜和番茄。"


def test_a_chinese_question_word_that_holds_a_traditional_particle_still_counts():
    # 著 is also the traditional form of the particle 着, but in 著作 it is the question's content
    text = "林远，字子文，潮港人。林远晚年隐居山中。著有《潮汐志》、《盐港杂记》等。"
    assert choose("林远的著作是什么？", [(1, text, "")], flat, 1)[0].text.startswith("著有")


def test_a_chinese_content_word_on_the_stopword_list_still_counts():
    # spaCy's Chinese stopwords (dropped from a search's terms) hold 应用 and 出现: the sentence choice keeps them
    text = "寒铁是北境出产的一种金属。寒铁色泽暗蓝，质地坚硬。寒铁主要应用于锻造船锚和铁链。"
    assert choose("寒铁的应用有哪些？", [(1, text, "")], flat, 1)[0].text == "寒铁主要应用于锻造船锚和铁链。"


def test_a_chinese_article_subject_counts_in_the_sentences_that_drop_it():
    text = ("黑潮守望者（Black Tide Wardens）是潮港的海防组织，黑潮守望者的总部设在灰港。"
            "412年成立，首任统领是奥斯里克。守望者在1390年扩编。")
    assert choose("黑潮守望者成立于什么时候？", [(1, text, "")], flat, 1)[0].text == "412年成立，首任统领是奥斯里克。"


def test_a_chinese_place_of_origin_answers_where_someone_is_from():
    text = "林远（1872年—1944年），潮港史官。浙江省潮港县东城村人。林远晚年隐居山中。"
    assert choose("林远的籍贯是哪里？", [(1, text, "")], flat, 1)[0].text == "浙江省潮港县东城村人。"


def test_a_chinese_word_that_holds_du_still_counts():
    # 都 is the adverb "all" in 都是, but in 首都 (capital) it is the question's content
    text = "科兰丁浅海是一片盐沼群岛。浅海约有六万人口，首都是港城灰港。各岛之间靠渡船相连。"
    assert choose("科兰丁浅海的首都是哪里？", [(1, text, "")], flat, 1)[0].text == "浅海约有六万人口，首都是港城灰港。"


def test_the_kind_a_chinese_question_word_picks_out_is_not_looked_for():
    # 哪个政权 asks for a regime by name: the answer names one and need not say 政权
    text = "雍远是潮港的守将。雍远在灰港驻守多年，曾效力于盐域政权。东吴最终接受了雍远的投降。"
    assert choose("雍远向哪个政权投降？", [(1, text, "")], flat, 1)[0].text == "东吴最终接受了雍远的投降。"
    assert answer_kinds("雍远向哪个政权投降？") == {"政权"}
    assert answer_kinds("赤盐有什么用途？") == set()  # the canon says 用途 in other words (用于), which answer it


def test_the_verb_before_a_chinese_question_word_is_not_content():
    # 有什么 and 是哪 ask; the 有 or 是 left in made a bigram with the word before (铁路有: 路有), which matched
    # 铁路有限公司 and nothing the question means; 哪一 asks as 哪个 does
    assert "路有" not in question_terms("灰港铁路有什么作用？", flat, all_words=True)
    assert "港是" not in question_terms("灰港是哪里的港口？", flat, all_words=True)
    assert not {"哪一", "一科"} & set(question_terms("潮雀属于哪一科？", flat, all_words=True))


def test_a_chinese_question_character_no_term_holds_tells_apart_sentences_that_tie():
    # every sentence names the bird (the article's subject): 卵 alone, between 的 and the question word, decides
    bird = ("潮雀是灰港沿岸的一种小型鸣禽。潮雀体长约十二公分，背部灰褐色。"
            "卵为淡蓝色，每次产三到五枚。潮雀在盐沼的芦苇中筑巢。")
    assert choose("潮雀的卵有什么特征？", [(1, bird, "")], flat, 1)[0].text == "卵为淡蓝色，每次产三到五枚。"
    # 卒 of 卒于 (于 a function character): every sentence gives a year, one says when he died
    king = ("灰王（潮历80年—潮历131年），灰港第三代君主。潮历95年即位。潮历120年迁都盐湾。"
            "卒于潮历131年，其子继位。")
    assert choose("灰王卒于哪一年？", [(1, king, "")], flat, 1)[0].text == "卒于潮历131年，其子继位。"
    # a character the question holds alone (层 of 第3层) is one wherever a sentence holds it, not only alone
    tower = "灰塔共有七层。藏书室在第5层，观星台在第6至7层。第3层设有议事厅和档案室。"
    assert choose("灰塔第3层有哪些房间？", [(1, tower, "")], flat, 1)[0].text == "第3层设有议事厅和档案室。"
    # the canon writes 下腭骨 where the question writes 下颚骨: 下 and 骨 still count
    fish = "盐鳞鱼是灰港的一种小鱼。盐鳞鱼体延长而侧扁。下腭骨后部向口内突起。盐鳞鱼以藻类为食。"
    assert choose("盐鳞鱼的下颚骨有什么特点？", [(1, fish, "")], flat, 1)[0].text == "下腭骨后部向口内突起。"


def test_a_chinese_habit_question_picks_where_it_lives_and_what_it_eats():
    # 生活习性 is told as 栖息于… and 以…为食, which share no word with the question
    bird = ("潮雀是灰港沿岸的一种小型鸣禽。潮雀体长约十二公分，背部灰褐色。"
            "潮雀多栖息于盐沼的芦苇丛中，以小蟹和海虫为食。潮雀的名字来自潮汐。")
    assert (choose("潮雀的生活习性是什么样的？", [(1, bird, "")], flat, 1)[0].text
            == "潮雀多栖息于盐沼的芦苇丛中，以小蟹和海虫为食。")


@pytest.mark.parametrize("first, subject", [
    ("唐爱陆（1872年—1944年），清朝末年革命家。", "唐爱陆"),
    ("散发脱刀令，俗称断发令，是明治政府的布告。", "散发脱刀令"),
    ("《夏日旋律》是一款恋爱冒险游戏。", "夏日旋律"),
    ("余杭站位于浙江省杭州市。", "余杭站"),
    ("商朝時期，這塊土地上出現了諸方國。", ""),  # a time, not a subject
    ("1993年，兩家鐵路公司合併。", ""),
    ("在歐洲，梵語的研究由德國學者開創。", ""),
    ("島嶼之間距離比較近的，早期靠小遊艇。", ""),
    ("The Wardens keep the sea wall.", ""),
])
def test_the_subject_a_chinese_article_opens_with(first, subject):
    assert article_subject(first) == frozenset(tokens(subject))


def test_passage_coverage_counts_related_forms_and_the_heading():
    assert passage_coverage("Who founded the Brine Wardens?", "Their founder lost both hands.", "Brine Wardens",
                            flat) == pytest.approx((RELATED_FORM + 2) / 3)
    assert passage_coverage("Who founded the Brine Wardens?", "The harbour is quiet.", "", flat) == 0.0


# --- analyses kept by the index ---------------------------------------------

TRICKY = ("# The Brine Wardens\n\nThe Wardens keep the sea wall. Mr. Osric Vane, their founder, lost both hands.\n"
          "Customs\n- Grey cloaks\n- They wear grey cloaks in winter, e.g. at the solstice.\n\n"
          '"Go!" he said. It was 412 AD and the sea wall held through a winter that went on\n'
          "and on until spring.\n黑潮守望者成立于412年。他们的创立者是奥斯里克。\n")


def test_a_stored_analysis_reads_back_as_the_one_worked_out():
    forget_analyses()
    fresh = analysed(TRICKY)
    assert len(fresh) >= 6 and {s.heading for s, _ in fresh} >= {"The Brine Wardens", "Grey cloaks"}
    forget_analyses()
    remember(TRICKY, stored_analysis(TRICKY))
    assert analysed(TRICKY) == fresh


def test_a_stored_analysis_is_what_analysed_returns_unless_it_is_of_another_version_or_text():
    version, length, headings, rows = json.loads(stored_analysis(TRICKY))
    rows[0][4] = "planted"
    for stored, taken in ((json.dumps([version, length, headings, rows]), True),
                          (json.dumps([version + 1, length, headings, rows]), False),
                          (json.dumps([version, length + 1, headings, rows]), False),
                          ('[1, "not an analysis"', False)):
        forget_analyses()
        remember(TRICKY, stored)
        assert (analysed(TRICKY)[0][1] == {"planted"}) is taken, stored
    forget_analyses()


def test_the_analysis_is_pinned_so_a_change_to_it_bumps_its_version():
    """Indexes keep analyses until ANALYSIS_VERSION changes. If this fails, the sentence split or a sentence's
    terms changed: bump kb.extract.ANALYSIS_VERSION (indexes then work them out again) and pin the new digest."""
    digest = hashlib.sha1(stored_analysis(TRICKY).encode()).hexdigest()
    assert (ANALYSIS_VERSION, digest) == (1, "5e9adc096e2a6066896e3bc9ffe00f50c3765779")


# --- end to end -------------------------------------------------------------------


@pytest.fixture
def wardens_kb(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    (world / "brine-wardens.md").write_text(
        "---\ntitle: The Brine Wardens\n---\n# The Brine Wardens\n\n"
        "The Brine Wardens keep the northern lights of the Fellstack Isles and rescue sailors in winter. "
        "Their founder, Osric Vane, lost both hands to frostbite in the winter of 212 TC. "
        "Wardens wear grey.\n\n"
        "## Customs\n\n"
        "Every warden carries a lantern of tideglass, and no warden sails alone past the outer reefs.\n",
        encoding="utf-8")
    (world / "harbour.md").write_text(
        "# Greyhithe\n\nGreyhithe is the capital of the Corrandine Shallows. Its harbour has nine piers "
        "and a salt market that opens at dawn.\n", encoding="utf-8")
    kb_dir = tmp_path / "kb"
    result = invoke("ingest", world, "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    return kb_dir


def test_kb_ask_names_the_founder_and_cites_its_words(wardens_kb):
    result, data = invoke_json("ask", "Who founded the Brine Wardens?", "--kb", wardens_kb)
    assert result.exit_code == 0, result.output
    assert data["mode"] == "extractive"
    assert "Osric Vane" in data["answer"]
    by_n = {c["n"]: c for c in data["citations"]}
    pairs = re.findall(r"\s*(.+?) \[(\d+)\](?=\s|$)", data["answer"])
    assert pairs and len(pairs) <= 3 + 3  # at most three chosen, each with what it leans on
    assert "Osric Vane" in pairs[0][0]
    for sentence, n in pairs:
        assert sentence in " ".join(by_n[int(n)]["text"].split())


def test_an_llm_answer_that_cites_nothing_lists_its_canon_as_retrieved(wardens_kb, fake_openai):
    fake_openai.reply = "The wardens were founded long ago."
    result, data = invoke_json("ask", "Who founded the Brine Wardens?", "--kb", wardens_kb,
                               "--base-url", fake_openai.base_url)
    assert result.exit_code == 0, result.output
    assert data["mode"] == "llm" and data["citations"] == []
    _, found = invoke_json("search", "Who founded the Brine Wardens?", "--kb", wardens_kb)
    assert [c["id"] for c in data["retrieved"]] == [r["id"] for r in found["results"]]
    plain = invoke("ask", "Who founded the Brine Wardens?", "--kb", wardens_kb, "--base-url", fake_openai.base_url)
    assert "retrieved, not cited" in plain.stdout

    fake_openai.reply = "Osric Vane founded them [1]."
    _, data = invoke_json("ask", "Who founded the Brine Wardens?", "--kb", wardens_kb,
                          "--base-url", fake_openai.base_url)
    assert [c["n"] for c in data["citations"]] == [1] and "retrieved" not in data


def test_an_index_without_the_analyses_it_keeps_gives_the_same_answers(wardens_kb, monkeypatch):
    """The index keeps each chunk's token count and sentence analysis, so an answer need not work them out;
    without them (an index that cannot give them) every answer is the same, worked out again."""
    kb = KnowledgeBase.open(wardens_kb)
    corpus = kb.corpus
    kept = corpus.worked_out(corpus.ids)
    assert kept == {cid: (count_tokens(text), stored_analysis(text)) for cid, text, _ in corpus.chunks()}
    questions = ["Who founded the Brine Wardens?", "What does every warden carry?",
                 "How many piers does the harbour of Greyhithe have?", "Who keeps the northern lights?"]
    forget_analyses()
    with_kept = [kb.ask(question, extractive=True).to_json() for question in questions]
    forget_analyses()
    monkeypatch.setattr(Corpus, "worked_out", lambda self, ids: {})
    reopened = KnowledgeBase.open(wardens_kb)
    assert [reopened.ask(question, extractive=True).to_json() for question in questions] == with_kept


def test_the_context_is_packed_by_the_token_counts_the_index_kept(wardens_kb):
    kb = KnowledgeBase.open(wardens_kb)
    question = "Who founded the Brine Wardens?"
    assert len(kb.ask(question, extractive=True).citations) > 1
    with sqlite3.connect(index_path(kb.store)) as db:
        db.execute("UPDATE chunks SET tokens = ?", (kb.settings.context_tokens,))
    assert len(KnowledgeBase.open(wardens_kb).ask(question, extractive=True).citations) == 1
