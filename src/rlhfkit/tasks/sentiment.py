"""The sentiment task: "write positive movie reviews", the lecture's task in a tiny world.

The lecture tunes GPT-2 to continue IMDB review openings positively, scored by a sentiment
classifier. The built-in demo must run offline on two CPU cores in three minutes, so here
the world is small enough for a model of half a million parameters to learn in a minute:

    world      short synthetic reviews (2-4 sentences, about 330 distinct words) from a
               grammar over real sentiment-bearing English words, with negations ("not",
               "never") and intensifiers ("very", "really", "extremely"); positive,
               negative and mixed reviews, a third of them with a neutral remark
               ("I saw it last night."). Deterministic given a seed.
    prompts    review openings that leave the sentiment open: "The acting was",
               "I watched this film last night and", "This movie".
    SFT data   {"prompt": opening, "completion": rest of the review}; the completion starts
               with a space, so `prompt + completion` is the review. Sentiment is random in
               shares (`SHARES`) that make the corpus, and so the SFT model, neutral on
               average (mean gold score near 0).
    gold       `gold_score`: VADER's compound score of the whole review, in [-1, 1]. Used
               only to evaluate; the policy never sees it.
    labeler    `Labeler`: a simulated human who labels response pairs for the reward model
               through a Bradley-Terry draw, with a systematic bias (see `Labeler`).

`distinct_n` and `max_sentence_share` are the demo's checks against a policy that collapses
onto one stock phrase ("I loved it. I loved it. I loved it.").
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from functools import lru_cache

from rlhfkit.errors import ConfigError

# ---------------------------------------------------------------------------------------
# The vocabulary. Every sentiment word is in VADER's lexicon (so the gold score sees it);
# positive and negative lists have about the same size and strength, so a review of random
# sentiment scores 0 on average.
# ---------------------------------------------------------------------------------------

_FILMS = ["movie", "film"]
# (noun phrase, verb "to be" in the past tense)
_ASPECTS = [("acting", "was"), ("plot", "was"), ("story", "was"), ("script", "was"),
            ("music", "was"), ("soundtrack", "was"), ("ending", "was"), ("dialogue", "was"),
            ("camera work", "was"), ("pacing", "was"), ("first half", "was"),
            ("last scene", "was"), ("main character", "was"), ("twist", "was"),
            ("editing", "was"), ("lighting", "was"), ("lead role", "was"), ("subplot", "was"),
            ("score", "was"), ("narration", "was"), ("final act", "was"),
            ("opening scene", "was"), ("chase scene", "was"), ("animation", "was"),
            ("voice acting", "was"), ("makeup", "was"), ("direction", "was"),
            ("screenplay", "was"), ("set design", "was"), ("sound design", "was"),
            ("story line", "was"), ("big finale", "was"), ("middle part", "was"),
            ("visual effects", "were"), ("songs", "were"), ("costumes", "were"),
            ("action scenes", "were"), ("gags", "were"), ("car chases", "were"),
            ("characters", "were"), ("sets", "were"), ("performances", "were"),
            ("dance scenes", "were"), ("flashbacks", "were"), ("end titles", "were")]
_PEOPLE = [("actors", "were"), ("cast", "was"), ("director", "was"),
           ("lead actress", "was"), ("main actor", "was"), ("kids", "were"),
           ("second cast", "was"), ("young star", "was"), ("writers", "were"),
           ("child actors", "were"), ("whole cast", "was"), ("old actor", "was")]
_POS_ADJ = ["good", "great", "wonderful", "excellent", "brilliant", "amazing", "beautiful",
            "fantastic", "lovely", "fun", "funny", "charming", "clever", "perfect",
            "enjoyable", "strong", "impressive", "delightful", "superb", "nice", "sweet",
            "smart", "exciting", "hilarious", "entertaining", "interesting", "creative",
            "terrific", "splendid", "powerful", "inspiring", "pleasant", "engaging",
            "heartwarming", "thrilling", "fabulous", "remarkable", "lively", "adorable",
            "elegant", "amusing", "playful", "cute", "honest"]
_NEG_ADJ = ["bad", "terrible", "awful", "boring", "dull", "weak", "stupid", "horrible",
            "poor", "ugly", "messy", "painful", "dumb", "lame", "annoying", "disappointing",
            "pathetic", "dreadful", "lazy", "confusing", "tired", "useless", "sad",
            "horrendous", "ridiculous", "offensive", "depressing", "irritating", "frustrating",
            "miserable", "disgusting", "nasty", "lousy", "unpleasant", "disastrous",
            "worthless", "shameful", "insulting", "idiotic", "hopeless", "inferior", "mindless",
            "clueless", "careless", "grim", "dismal"]
_BOOSTERS = ["very", "really", "extremely", "so", "quite", "totally", "incredibly"]
# Negated opposites that a person would write: "not bad" (mildly positive), "not very
# good", "never funny" (negative).
_NEGATED_POS = ["not bad", "not boring", "never boring", "not dull", "never dull",
                "not weak", "not stupid", "not confusing", "not annoying", "not that bad"]
_NEGATED_NEG = ["not good", "not funny", "not very good", "not really good", "never funny",
                "not very funny", "not interesting", "never exciting", "not clever",
                "not really interesting", "not great", "not that good"]
# "The director did a great job."
_JOB_ADJ = {1: ["good", "great", "wonderful", "fantastic", "brilliant", "superb", "nice",
                "excellent", "perfect"],
            -1: ["bad", "terrible", "awful", "poor", "weak", "horrible", "lazy", "pathetic",
                 "dreadful"]}
_POS_VERBS = ["loved", "liked", "enjoyed", "adored", "admired"]
_NEG_VERBS = ["hated", "disliked"]
_POS_VERBS_BASE = ["love", "like", "enjoy"]          # negated: "I did not like the plot."
_POS_FEELINGS = ["smile", "laugh", "happy"]   # "The ending made me smile."
_NEG_FEELINGS = ["cry", "angry", "sad", "sick"]
_POS_STATES = ["happy", "impressed", "thrilled", "excited", "satisfied", "glad"]
_NEG_STATES = ["bored", "disappointed", "angry", "upset", "confused", "sad", "tired"]
_POS_STATES_BY = ["impressed", "thrilled", "delighted", "amazed", "pleased"]  # "... by the plot."
_NEG_STATES_BY = ["bored", "disappointed", "annoyed", "confused", "frustrated"]
_POS_NOUNS = ["masterpiece", "joy to watch", "pleasure", "delight", "real treat"]
_NEG_NOUNS = ["mess", "waste of time", "disaster", "failure", "total mess"]
_TIMES = ["last night", "yesterday", "on Sunday", "with my sister", "with my dad",
          "at home", "at the cinema", "on a Monday", "twice", "this week"]
_COMPANIONS = ["family", "sister", "brother", "parents", "kids", "wife", "husband", "dad"]
_TOPICS = ["a small town", "two brothers", "a stray dog", "a young doctor", "an old house",
           "a band on the road", "a family at the sea", "a detective in the city",
           "a ship at sea", "a girl and her horse", "a chef in Paris", "a boy who can fly",
           "a pilot on an island", "twins in a village", "a robot in space", "a painter"]
_PARTS = ["first half", "second half", "opening scene", "final act", "middle part",
          "last ten minutes", "first hour", "big finale"]
_GENRES = ["drama", "family film", "spy film", "heist movie", "road movie", "musical",
           "western", "cartoon", "biopic", "documentary", "period piece", "sports movie"]
_FILLERS = ["I saw it {time}.", "It is about {topic}.", "The film runs for two hours.",
            "It is based on a book.", "I went in without knowing much.",
            "The theater was full.", "I watched it {time}.", "It came out {time}.",
            "I had heard a lot about it.", "It is a remake of an old film.",
            "It is the second film of the series.", "My {companion} picked it.",
            "We watched it {time}.", "It is set in {topic}."]


def _pick(rng: random.Random, words):
    return words[rng.randrange(len(words))]


def _adj(rng: random.Random, pol: int) -> str:
    """A bare adjective of polarity `pol` (+1 or -1)."""
    return _pick(rng, _POS_ADJ if pol > 0 else _NEG_ADJ)


def _adj_phrase(rng: random.Random, pol: int) -> str:
    """An adjective phrase of polarity `pol`: plain, boosted ("really good") or a negated
    opposite ("not bad", "never boring", "not very funny")."""
    r = rng.random()
    if r < 0.45:
        return _adj(rng, pol)
    if r < 0.85:
        return f"{_pick(rng, _BOOSTERS)} {_adj(rng, pol)}"
    return _pick(rng, _NEGATED_POS if pol > 0 else _NEGATED_NEG)


def _verb(rng: random.Random, pol: int) -> str:
    """A past-tense opinion verb of polarity `pol`: "loved", "hated", "did not like"."""
    if pol > 0:
        return _pick(rng, _POS_VERBS)
    r = rng.random()
    if r < 0.5:
        return _pick(rng, _NEG_VERBS)
    if r < 0.8:
        return f"did not {_pick(rng, _POS_VERBS_BASE)}"
    return f"never {_pick(rng, _POS_VERBS[:3])}"


def _feeling(rng: random.Random, pol: int) -> str:
    return _pick(rng, _POS_FEELINGS if pol > 0 else _NEG_FEELINGS)


def _state(rng: random.Random, pol: int) -> str:
    return _pick(rng, _POS_STATES if pol > 0 else _NEG_STATES)


def _noun(rng: random.Random, pol: int) -> str:
    return _pick(rng, _POS_NOUNS if pol > 0 else _NEG_NOUNS)


def _recommend(rng: random.Random, pol: int) -> str:
    who = _pick(rng, ["my brother", "everyone", "my family", "anyone", "you"])
    if pol > 0:
        return _pick(rng, [f"I would recommend it to {who}.", "I highly recommend it.",
                           f"I would recommend it to {who}!"])
    return _pick(rng, [f"I would not recommend it to {who}.", "I would never recommend it.",
                       "Skip this one."])


# ---------------------------------------------------------------------------------------
# Sentences. `_sentence(rng, pol)` is a whole sentence of polarity `pol` (0 = neutral
# filler); a review's first sentence is split into an opening (the prompt, which leaves the
# sentiment open) and its rest (`_opening`, `_continue`).
# ---------------------------------------------------------------------------------------


def _sentence(rng: random.Random, pol: int) -> str:
    if pol == 0:
        return _pick(rng, _FILLERS).format(time=_pick(rng, _TIMES), topic=_pick(rng, _TOPICS),
                                           companion=_pick(rng, _COMPANIONS))
    aspect, be = _pick(rng, _ASPECTS)
    people, pbe = _pick(rng, _PEOPLE)
    film = _pick(rng, _FILMS)
    kind = rng.randrange(16)
    if kind == 0:
        other, obe = _pick(rng, _ASPECTS)
        if other != aspect:
            return f"The {aspect} {be} {_adj_phrase(rng, pol)} and the {other} {obe} {_adj(rng, pol)}."
    if kind <= 2:
        return f"The {aspect} {be} {_adj_phrase(rng, pol)}."
    if kind == 3:
        return f"The {people} {pbe} {_adj_phrase(rng, pol)}."
    if kind == 4:
        return f"The {people} did a {_pick(rng, _JOB_ADJ[pol])} job."
    if kind == 5:
        return f"I {_verb(rng, pol)} the {aspect}."
    if kind == 6:
        return f"It was a {_adj(rng, pol)} {film}."
    if kind == 7:
        noun = _noun(rng, pol)
        return _pick(rng, [f"It was a {noun}.", f"What a {noun}!"])
    if kind == 8:
        return f"The {aspect} made me {_feeling(rng, pol)}."
    if kind == 9:
        return f"I was {_pick(rng, _POS_STATES_BY if pol > 0 else _NEG_STATES_BY)} by the {aspect}."
    if kind == 10:
        return _recommend(rng, pol)
    if kind == 11:
        return f"The {film} is {_adj_phrase(rng, pol)}."
    if kind == 12:
        return f"The {aspect} in the {_pick(rng, _PARTS)} {be} {_adj_phrase(rng, pol)}."
    if kind == 13:
        return f"I thought the {aspect} {be} {_adj_phrase(rng, pol)}."
    if kind == 14:
        return f"My {_pick(rng, _COMPANIONS)} found the {aspect} {_adj(rng, pol)}."
    return f"For a {_pick(rng, _GENRES)}, the {aspect} {be} {_adj_phrase(rng, pol)}."


# Openings: (template, kind). The kind picks how `_continue` finishes the sentence.
_OPENINGS = [
    ("The {aspect} {be}", "be"),
    ("The {aspect}", "aspect"),
    ("This {film}", "film"),
    ("I watched this {film} {time} and", "and"),
    ("I saw this {film} {time} and", "and"),
    ("My {companion} and I", "we"),
    ("I have to say that", "say"),
    ("The {people}", "people"),
    ("From the first scene,", "scene"),
    ("In my opinion,", "say"),
]


def _opening(rng: random.Random) -> tuple[str, str, dict]:
    """A review opening (the prompt), its kind and the slot values it used."""
    template, kind = _pick(rng, _OPENINGS)
    aspect, be = _pick(rng, _ASPECTS)
    people, pbe = _pick(rng, _PEOPLE)
    slots = dict(aspect=aspect, be=be, people=people, pbe=pbe, film=_pick(rng, _FILMS),
                 time=_pick(rng, _TIMES), companion=_pick(rng, _COMPANIONS))
    return template.format(**slots), kind, slots


def _continue(rng: random.Random, kind: str, slots: dict, pol: int) -> str:
    """The rest of the first sentence after an opening of `kind`, with polarity `pol`;
    starts with a space and ends the sentence."""
    film, be = slots["film"], slots["be"]
    if kind == "be":
        if rng.random() < 0.25:
            other, obe = _pick(rng, _ASPECTS)
            if other != slots["aspect"]:
                return f" {_adj_phrase(rng, pol)} and the {other} {obe} {_adj(rng, pol)}."
        return f" {_adj_phrase(rng, pol)}."
    if kind == "aspect":
        return _pick(rng, [f" {be} {_adj_phrase(rng, pol)}.", f" {be} {_adj_phrase(rng, pol)}.",
                           f" made me {_feeling(rng, pol)}."])
    if kind == "film":
        return _pick(rng, [f" was {_adj_phrase(rng, pol)}.", f" is {_adj_phrase(rng, pol)}.",
                           f" was a {_noun(rng, pol)}.", f" made me {_feeling(rng, pol)}."])
    if kind == "and":
        aspect, abe = _pick(rng, _ASPECTS)
        return _pick(rng, [f" I {_verb(rng, pol)} it.", f" it was {_adj_phrase(rng, pol)}.",
                           f" I was {_state(rng, pol)}.", f" I {_verb(rng, pol)} the {aspect}.",
                           f" the {aspect} {abe} {_adj_phrase(rng, pol)}."])
    if kind == "we":
        return _pick(rng, [f" {_verb(rng, pol)} this {film}.", f" were {_state(rng, pol)}.",
                           f" {_verb(rng, pol)} the {slots['aspect']}."])
    if kind == "say":
        aspect, abe = _pick(rng, _ASPECTS)
        return _pick(rng, [f" the {aspect} {abe} {_adj_phrase(rng, pol)}.",
                           f" I {_verb(rng, pol)} this {film}.",
                           f" this {film} is {_adj_phrase(rng, pol)}.",
                           f" it was a {_noun(rng, pol)}."])
    if kind == "people":
        return _pick(rng, [f" {slots['pbe']} {_adj_phrase(rng, pol)}.",
                           f" did a {_pick(rng, _JOB_ADJ[pol])} job."])
    if kind == "scene":
        return _pick(rng, [f" I was {_state(rng, pol)}.",
                           f" I knew it would be {_adj(rng, pol)}.",
                           f" the {slots['aspect']} {be} {_adj_phrase(rng, pol)}."])
    raise AssertionError(kind)


SENTIMENTS = ("positive", "negative", "mixed")
# How often a review has each sentiment. Positive words are a little stronger in VADER than
# negative ones, and mixed reviews lean positive, so equal shares would make the corpus (and
# the SFT model) positive on average; these shares put its mean gold score near 0.
SHARES = (0.31, 0.36, 0.33)
NEUTRAL_P = 0.3   # chance that a review has one neutral remark ("I saw it last night.")


def _polarities(rng: random.Random, sentiment: str, n_sentences: int) -> list[int]:
    """Polarity (+1, -1; 0 = neutral filler) of each sentence of a review of `sentiment`."""
    if sentiment == "mixed":
        # Both signs occur; a random first sign so openings of mixed reviews are unbiased.
        first = rng.choice((1, -1))
        pols = [first, -first] + [rng.choice((1, -1)) for _ in range(n_sentences - 2)]
        rng.shuffle(pols)
    else:
        pols = [1 if sentiment == "positive" else -1] * n_sentences
    if rng.random() < NEUTRAL_P:
        pols.insert(rng.randrange(1, n_sentences + 1), 0)   # a neutral remark
    return pols


def _review(rng: random.Random, sentiment: str | None) -> tuple[str, str]:
    """One review as (opening, rest): `opening + rest` is the whole review."""
    if sentiment is None:
        sentiment = rng.choices(SENTIMENTS, SHARES)[0]
    elif sentiment not in SENTIMENTS:
        raise ConfigError(f"sentiment: expected one of {', '.join(SENTIMENTS)}, "
                          f"got {sentiment!r}")
    pols = _polarities(rng, sentiment, rng.randint(2, 3))
    opening, kind, slots = _opening(rng)
    parts = [_continue(rng, kind, slots, pols[0])]
    but_used = False
    for prev, pol in zip(pols, pols[1:]):
        sentence = _sentence(rng, pol)
        if pol * prev < 0 and not but_used and rng.random() < 0.5:   # "But the ending was awful."
            but_used = True
            if not sentence.startswith("I "):
                sentence = sentence[0].lower() + sentence[1:]
            sentence = "But " + sentence
        parts.append(" " + sentence)
    return opening, "".join(parts)


def make_reviews(n: int, seed: int = 0, sentiment: str | None = None) -> list[str]:
    """`n` whole reviews, deterministic given `seed`.

    `sentiment` is "positive", "negative", "mixed" or None (each review picks one of the
    three at random). `make_reviews(n, seed)[i]` equals `prompt + completion` of
    `make_corpus(n, seed)[i]`.
    """
    rng = random.Random(seed)
    return ["".join(_review(rng, sentiment)) for _ in range(n)]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` review openings that leave the sentiment open ("The acting was", "This movie",
    "I watched this film last night and"), deterministic given `seed`."""
    rng = random.Random(seed)
    return [_opening(rng)[0] for _ in range(n)]


def make_corpus(n: int, seed: int = 0, sentiment: str | None = None) -> list[dict]:
    """`n` SFT rows `{"prompt": opening, "completion": rest}`, deterministic given `seed`.

    The completion starts with a space and ends with a full stop (or "!"), so
    `prompt + completion` is the review. With `sentiment=None` each review's sentiment is
    random (positive, negative or mixed in equal shares), so a model trained on the corpus
    is neutral on average: mean `gold_score` near 0.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        opening, rest = _review(rng, sentiment)
        rows.append({"prompt": opening, "completion": rest})
    return rows


def vocabulary(texts) -> set[str]:
    """The set of lower-cased words (punctuation stripped) in `texts`."""
    return {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}


# ---------------------------------------------------------------------------------------
# Gold score: VADER (Hutto & Gilbert 2014), a rule-based sentiment analyser that knows
# negation ("not good" < 0), boosters ("very good" > "good") and "but".
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _analyser():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1 << 16)
def _vader(text: str) -> float:
    return float(_analyser().polarity_scores(text)["compound"])


def join(prompt: str, response: str) -> str:
    """`prompt + response`, with one space between them if neither side has one."""
    if prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        return prompt + " " + response
    return prompt + response


def gold_score(prompt: str, response: str) -> float:
    """VADER's compound score of the whole review `prompt + response`, in [-1, 1].

    The evaluation's ground truth ("how positive is this review really"); training never
    sees it. >= 0.05 is conventionally positive, <= -0.05 negative.
    """
    return _vader(join(prompt, response))


def gold_scores(prompts: list[str], responses: list[str]) -> list[float]:
    """`gold_score` of each pair; a reward function `fn(prompts, responses) -> list[float]`."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [gold_score(p, r) for p, r in zip(prompts, responses)]


# ---------------------------------------------------------------------------------------
# The simulated human labeler.
# ---------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, split after ".", "!" or "?" followed by whitespace; stripped,
    empty ones dropped. A trailing fragment without an end mark counts as a sentence."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def first_sentence(response: str) -> str:
    """The response up to and including its first ".", "!" or "?" (followed by whitespace
    or the end); the whole response when it has none. Leading whitespace is kept."""
    m = re.search(r"[.!?](?=\s|$)", response)
    return response if m is None else response[:m.end()]


BIASES = ("first_sentence", "length", "none")


class Labeler:
    """A simulated human who says which of two responses to a prompt is better.

    Real annotators are noisy and systematically biased; this one is both, by design.
    Its *perceived* score `s` of a response depends on `bias`:

        "length"          VADER of the whole review + `length_bonus` per response word:
                          longer looks more thorough (Singhal et al. 2023). (default)
        "first_sentence"  VADER of the prompt + the response's first sentence only: it
                          skims.
        "none"            VADER of the whole review: the gold score.

    The label is a Bradley-Terry draw, the model the reward model's loss assumes:

        P(a preferred to b) = sigmoid((s_a - s_b) / noise_scale)

    which is what a labeler gets who adds independent Gumbel noise of scale `noise_scale`
    to each perceived score and picks the larger. Small `noise_scale`: nearly always the
    higher-scoring response; near-ties: close to a coin flip.

    A bias opens the gap between what the labeler rewards and what is true (gold) that
    reward hacking needs to show. "length" is the default (the demo's too): it still
    rewards positivity first, so a policy with a KL penalty learns the intended task, while
    an over-optimised one also grows its reviews with stock sentences, which the gold
    score, near its ceiling, barely rewards. "first_sentence" lets a policy win with a
    glowing first sentence and a bad rest.
    """

    def __init__(self, bias: str = "length", noise_scale: float = 0.1,
                 seed: int = 0, length_bonus: float = 0.01):
        if bias not in BIASES:
            raise ConfigError(f"labeler.bias: expected one of {', '.join(BIASES)}, got {bias!r}")
        if not (isinstance(noise_scale, (int, float)) and noise_scale > 0
                and math.isfinite(noise_scale)):
            raise ConfigError(f"labeler.noise_scale: expected a number > 0, got {noise_scale!r}")
        self.bias = bias
        self.noise_scale = float(noise_scale)
        self.length_bonus = float(length_bonus)
        self.rng = random.Random(seed)

    def score(self, prompt: str, response: str) -> float:
        """The labeler's perceived score of `response` (deterministic; the noise is in the
        Bradley-Terry draw of `prefer`)."""
        if self.bias == "first_sentence":
            return _vader(join(prompt, first_sentence(response)))
        s = _vader(join(prompt, response))
        if self.bias == "length":
            s += self.length_bonus * len(response.split())
        return s

    def p_prefer(self, prompt: str, a: str, b: str) -> float:
        """P(a preferred to b) = sigmoid((s_a - s_b) / noise_scale)."""
        z = (self.score(prompt, a) - self.score(prompt, b)) / self.noise_scale
        # Split by sign so exp never overflows.
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def prefer(self, prompt: str, a: str, b: str) -> bool:
        """One noisy label: True when the labeler prefers `a` to `b`."""
        return self.rng.random() < self.p_prefer(prompt, a, b)

    def label_pairs(self, prompts: list[str], responses_a: list[str],
                    responses_b: list[str]) -> list[dict]:
        """Label each pair; rows `{"prompt", "chosen", "rejected"}` (the preference format).

        Pairs with identical responses (after stripping whitespace) or exactly equal
        perceived scores carry no preference and are dropped, so fewer rows may come back.
        """
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} responses_a and "
                             f"{len(responses_b)} responses_b: expected equal lengths")
        rows = []
        for prompt, a, b in zip(prompts, responses_a, responses_b):
            if a.strip() == b.strip() or self.score(prompt, a) == self.score(prompt, b):
                continue
            chosen, rejected = (a, b) if self.prefer(prompt, a, b) else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return rows


# ---------------------------------------------------------------------------------------
# Diversity checks against a collapsed policy.
# ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+|[^\w\s]")


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams over all `texts`.

    Tokens are lower-cased words and punctuation marks; n-grams do not cross texts. 1.0 when
    no n-gram repeats, near 0 when every text is the same. 0.0 when there are no n-grams.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = []
    for text in texts:
        tokens = _TOKEN.findall(text.lower())
        grams.extend(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def _normalise_sentence(s: str) -> str:
    return " ".join(s.lower().split())


def max_sentence_share(texts: list[str]) -> float:
    """The largest fraction of `texts` that contain one identical sentence.

    Sentences come from `split_sentences`, compared lower-cased with whitespace collapsed;
    a sentence repeated inside one text counts once for it. 1.0 when every text shares a
    sentence (a stock phrase), 1/len(texts) when none is shared. 0.0 for no texts.
    """
    if not texts:
        return 0.0
    counts = Counter()
    for text in texts:
        counts.update({_normalise_sentence(s) for s in split_sentences(text)})
    return max(counts.values(), default=0) / len(texts)
