"""The built-in tasks: the review world, the gold score, the simulated labeler, the
diversity checks, the arithmetic reward and the task registry. Pure Python, no torch."""

from __future__ import annotations

import math
import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.tasks import TASKS, get_task
from rlhfkit.tasks import arithmetic as A
from rlhfkit.tasks import sentiment as S


# --------------------------------------------------------------------------- the world

def test_generators_are_deterministic_per_seed():
    assert S.make_reviews(50, seed=3) == S.make_reviews(50, seed=3)
    assert S.make_reviews(50, seed=3) != S.make_reviews(50, seed=4)
    assert S.make_prompts(50, seed=3) == S.make_prompts(50, seed=3)
    assert S.make_prompts(50, seed=3) != S.make_prompts(50, seed=4)
    assert S.make_corpus(50, seed=3) == S.make_corpus(50, seed=3)


def test_corpus_rows_split_a_review_into_opening_and_rest():
    rows = S.make_corpus(200, seed=1)
    assert [r["prompt"] + r["completion"] for r in rows] == S.make_reviews(200, seed=1)
    for r in rows:
        assert set(r) == {"prompt", "completion"}
        assert r["completion"].startswith(" ") and not r["completion"].startswith("  ")
        assert r["completion"].rstrip()[-1] in ".!"


def test_reviews_are_short_and_varied():
    reviews = S.make_reviews(200, seed=0)
    for review in reviews:
        sentences = S.split_sentences(review)
        assert 2 <= len(sentences) <= 4, review
        assert all(len(s.split()) <= 16 for s in sentences), review
    # Not one template: many distinct bigrams, no sentence shared by many reviews.
    assert S.distinct_n(reviews, 2) > 0.15
    assert S.max_sentence_share(reviews) < 0.1
    assert len(set(reviews)) == len(reviews)
    # A small vocabulary a tiny model can learn, but not a toy one.
    assert 100 <= len(S.vocabulary(S.make_reviews(5000, seed=0))) <= 400


def test_prompts_leave_the_sentiment_open():
    prompts = S.make_prompts(300, seed=0)
    assert len(set(prompts)) > 40
    assert all(S.gold_score(p, "") == 0.0 for p in prompts)
    assert all(1 <= len(p.split()) <= 9 for p in prompts)


def test_corpus_is_sentiment_neutral_on_average_with_both_signs():
    rows = S.make_corpus(1500, seed=0)
    gold = [S.gold_score(r["prompt"], r["completion"]) for r in rows]
    assert abs(statistics.mean(gold)) < 0.1
    assert sum(g > 0.5 for g in gold) > 300 and sum(g < -0.5 for g in gold) > 300


def test_sentiment_argument_picks_the_kind_of_review():
    pos = [S.gold_score(r, "") for r in S.make_reviews(300, seed=0, sentiment="positive")]
    neg = [S.gold_score(r, "") for r in S.make_reviews(300, seed=0, sentiment="negative")]
    assert sum(g > 0 for g in pos) >= 0.97 * len(pos)
    assert sum(g < 0 for g in neg) >= 0.97 * len(neg)
    with pytest.raises(ConfigError, match="sentiment: expected one of positive, negative, mixed"):
        S.make_reviews(1, sentiment="happy")


# --------------------------------------------------------------------------- gold score

def test_gold_score_by_hand():
    assert S.gold_score("The acting was", " wonderful. I loved this movie.") > 0.5
    assert S.gold_score("The acting was", " terrible. I hated this movie.") < -0.5
    good, not_good = S.gold_score("The plot was", " good."), S.gold_score("The plot was", " not good.")
    assert good > 0 > not_good
    assert S.gold_score("The plot was", " not bad.") > 0
    assert -1.0 <= S.gold_score("", "awful " * 50) <= 1.0
    # A missing space between prompt and response is added, not glued into "wasgreat".
    assert S.gold_score("The acting was", "great.") == S.gold_score("The acting was", " great.")
    assert S.gold_scores(["This film", "This film"], [" is great.", " is awful."]) == [
        S.gold_score("This film", " is great."), S.gold_score("This film", " is awful.")]


# --------------------------------------------------------------------------- the labeler

PROMPT = "The acting was"
GLOWING_THEN_AWFUL = " wonderful. The plot was terrible and the ending was awful. I hated it."
MILD = " fine. The music was nice."


def _share_preferred(labeler, prompt, a, b, n=400):
    return sum(labeler.prefer(prompt, a, b) for _ in range(n)) / n


def test_first_sentence_bias_opens_a_gap_to_gold():
    assert S.gold_score(PROMPT, GLOWING_THEN_AWFUL) < 0 < S.gold_score(PROMPT, MILD)
    skimmer = S.Labeler(bias="first_sentence", seed=0)
    careful = S.Labeler(bias="none", seed=0)
    assert skimmer.score(PROMPT, GLOWING_THEN_AWFUL) == S.gold_score(PROMPT, " wonderful.")
    assert careful.score(PROMPT, GLOWING_THEN_AWFUL) == S.gold_score(PROMPT, GLOWING_THEN_AWFUL)
    assert _share_preferred(skimmer, PROMPT, GLOWING_THEN_AWFUL, MILD) > 0.8
    assert _share_preferred(careful, PROMPT, GLOWING_THEN_AWFUL, MILD) < 0.2


def test_default_labeler_is_biased():
    assert S.Labeler().bias != "none"


def test_unbiased_labeler_agrees_with_gold_on_clear_pairs():
    a, b = S.make_corpus(600, seed=11), S.make_corpus(600, seed=12)
    prompts = [r["prompt"] for r in a]
    ra, rb = [r["completion"] for r in a], [r["completion"] for r in b]
    clear = [(p, x, y) for p, x, y in zip(prompts, ra, rb)
             if abs(S.gold_score(p, x) - S.gold_score(p, y)) > 0.5]
    assert len(clear) > 200
    labeler = S.Labeler(bias="none", noise_scale=0.05, seed=0)
    agree = [labeler.prefer(p, x, y) == (S.gold_score(p, x) > S.gold_score(p, y))
             for p, x, y in clear]
    assert sum(agree) / len(agree) > 0.9


def test_bradley_terry_probability_and_near_ties():
    labeler = S.Labeler(bias="none", noise_scale=0.1, seed=0)
    a, b = " great.", " good."
    d = S.gold_score(PROMPT, a) - S.gold_score(PROMPT, b)
    assert labeler.p_prefer(PROMPT, a, b) == pytest.approx(1 / (1 + math.exp(-d / 0.1)))
    assert labeler.p_prefer(PROMPT, a, b) + labeler.p_prefer(PROMPT, b, a) == pytest.approx(1)
    # A near-tie ("great" vs "great" plus a neutral sentence: equal scores) is a coin flip.
    tie_a, tie_b = " great.", " great. I saw it on Sunday."
    assert labeler.p_prefer(PROMPT, tie_a, tie_b) == 0.5
    assert 0.43 < _share_preferred(labeler, PROMPT, tie_a, tie_b, n=1000) < 0.57
    # Huge score gaps do not overflow.
    assert S.Labeler(noise_scale=1e-9).p_prefer(PROMPT, " awful.", " great.") == 0.0


def test_length_bias_adds_a_bonus_per_word():
    labeler = S.Labeler(bias="length", length_bonus=0.02)
    short, long = " great.", " great. I saw it on Sunday."
    assert labeler.score(PROMPT, long) - labeler.score(PROMPT, short) == pytest.approx(0.02 * 5)


def test_label_pairs_format_drops_ties_and_is_deterministic():
    prompts = [PROMPT] * 4
    ra = [" great.", " awful.", " great.", " great. The plot was bad."]
    rb = [" awful.", " great.", " great. ", " great. The plot was good."]
    rows = S.Labeler(bias="first_sentence", noise_scale=0.01, seed=0).label_pairs(prompts, ra, rb)
    # Pair 3 is identical after stripping; pair 4 ties for a skimmer (same first sentence).
    assert rows == [{"prompt": PROMPT, "chosen": " great.", "rejected": " awful."},
                    {"prompt": PROMPT, "chosen": " great.", "rejected": " awful."}]
    a, b = S.make_corpus(100, seed=1), S.make_corpus(100, seed=2)
    args = ([r["prompt"] for r in a], [r["completion"] for r in a], [r["completion"] for r in b])
    assert S.Labeler(seed=5).label_pairs(*args) == S.Labeler(seed=5).label_pairs(*args)
    with pytest.raises(ValueError, match="equal lengths"):
        S.Labeler().label_pairs(prompts, ra, rb[:2])


def test_labeler_rejects_bad_options():
    with pytest.raises(ConfigError, match="labeler.bias: expected one of first_sentence, length, none, got 'lazy'"):
        S.Labeler(bias="lazy")
    with pytest.raises(ConfigError, match="labeler.noise_scale"):
        S.Labeler(noise_scale=0)


def test_sentence_helpers_by_hand():
    assert S.split_sentences(" Great acting!  The plot was bad. And then") == [
        "Great acting!", "The plot was bad.", "And then"]
    assert S.first_sentence(" really good. The plot was bad.") == " really good."
    assert S.first_sentence(" really good") == " really good"
    assert S.first_sentence(" It cost 2.5 dollars. Bad.") == " It cost 2.5 dollars."


# --------------------------------------------------------------------------- diversity checks

def test_distinct_n_by_hand():
    assert S.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)   # ab, ba, ab
    assert S.distinct_n(["a b", "a b"], 2) == 0.5
    assert S.distinct_n(["a", "b"], 2) == 0.0                      # n-grams stay inside a text
    assert S.distinct_n(["Good. good."], 1) == 0.5                 # good . good .
    assert S.distinct_n([], 2) == 0.0
    assert S.distinct_n(["a b c"], 3) == 1.0


def test_max_sentence_share_by_hand():
    texts = ["I loved it. Great.", "i  loved it. Bad.", "Fine."]
    assert S.max_sentence_share(texts) == pytest.approx(2 / 3)
    assert S.max_sentence_share(["Yes. Yes.", "No."]) == 0.5      # once per text
    assert S.max_sentence_share(["A.", "B.", "C.", "D."]) == 0.25
    assert S.max_sentence_share([]) == 0.0


# --------------------------------------------------------------------------- arithmetic

def test_problems_are_deterministic_and_well_formed():
    problems = A.make_problems(300, seed=0, max_operand=20)
    assert problems == A.make_problems(300, seed=0, max_operand=20)
    assert problems != A.make_problems(300, seed=1, max_operand=20)
    for p in problems:
        a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", p).groups())
        assert 0 <= a <= 20 and 0 <= b <= 20


def test_reward_by_hand():
    prompts = ["37+58="] * 8
    responses = ["95", "94", " 95 and more", "95.", "95.5", "the answer is 95", "", "-95"]
    # Leading whitespace skipped, the leading integer read, the rest ignored (documented).
    assert A.reward(prompts, responses) == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert A.accuracy(prompts, responses) == pytest.approx(3 / 8)
    # A chat-formatted prompt is read from its last "a+b=".
    assert A.reward(["user: 37+58=<|eos|>assistant:"], [" 95"]) == [1.0]
    with pytest.raises(RlhfkitError, match="not an addition"):
        A.reward(["hello"], ["1"])
    with pytest.raises(ValueError):
        A.reward(["1+1="], [])


@settings(max_examples=50, deadline=None)
@given(a=st.integers(0, 999), b=st.integers(0, 999), tail=st.text(max_size=5))
def test_reward_reads_the_leading_integer(a, b, tail):
    if tail[:1].isdigit() or re.match(r"[.,]\d", tail):
        tail = " " + tail
    assert A.reward([f"{a}+{b}="], [f"{a + b}{tail}"]) == [1.0]
    assert A.reward([f"{a}+{b}="], [f"{a + b + 1}{tail}"]) == [0.0]


def test_sft_corpus_noise_share_is_about_the_requested_one():
    rows = A.make_sft_corpus(3000, seed=0, noise=0.3)
    assert [r["prompt"] for r in rows] == A.make_problems(3000, seed=0)
    right = A.reward([r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert abs((1 - statistics.mean(right)) - 0.3) < 0.03
    for r in rows:
        wrong = int(r["completion"]) - A.solve(r["prompt"])
        assert wrong in (0, -10, -2, -1, 1, 2, 10) and int(r["completion"]) >= 0
    clean = A.make_sft_corpus(200, seed=0, noise=0.0)
    assert A.accuracy([r["prompt"] for r in clean], [r["completion"] for r in clean]) == 1.0


# --------------------------------------------------------------------------- registry

def test_registry_and_unknown_task():
    assert set(TASKS) == {"sentiment", "arithmetic"}
    with pytest.raises(ConfigError) as e:
        get_task("x")
    assert str(e.value) == "task: expected one of sentiment, arithmetic, got 'x'"
    for name, task in TASKS.items():
        assert get_task(name) is task and task.name == name and task.description
        rows = task.make_sft_corpus(4, seed=0)
        prompts = task.make_prompts(4, seed=0)
        assert all(set(r) == {"prompt", "completion"} for r in rows) and len(prompts) == 4
        scores = task.eval_fn([r["prompt"] for r in rows], [r["completion"] for r in rows])
        assert len(scores) == 4 and all(-1.0 <= s <= 1.0 for s in scores)
    assert get_task("sentiment").reward_fn is None            # a reward model is learned
    assert get_task("arithmetic").reward_fn is A.reward       # verifiable
