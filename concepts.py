"""
Concepts (noun phrases) for C2LIP and rule-based hard negatives for DeGLA, offline and deterministic.

C2LIP (arXiv 2603.25722, METHOD.md §2.1) aligns each noun phrase of a caption with the image. We extract the
phrases with a Penn-Treebank tagger and a regular chunk grammar (nltk.RegexpParser's notation and matching)
instead of the official LLM prompt. DeGLA (arXiv 2504.16801, METHOD.md §3.8) trains on LLM-written hard
negatives; we write them with five small rules over the same tagger and chunks, in the official file schema.

Concept rules (extract_concepts):
- a concept is a chunk of GRAMMAR: determiners, possessive pronouns and numbers are kept ("a red dress",
  "his dog", "two dogs"); a possessor belongs to the phrase it owns ("the dog's bowl" is one concept);
  coordinated or adverb-led adjectives stay inside ("a black and white cat", "a very large dog").
- "X of Y" gives two concepts ("the front", "a building"), except after a quantity or container noun
  (PARTITIVES), where one concept reads better ("a herd of elephants", "a cup of coffee"). A framing noun
  followed by "of" ("a photo of", "portrait of") is dropped: it names the picture, not its content.
- drop chunks whose head (last) noun is a GENERIC_LOCATIONS word, and BOILERPLATE chunks ("stock photo").
- text is cut from the caption itself (inner whitespace collapsed), so casing and "dog's" read as written.
- order: as in the caption. dedupe on the canonical form (lowercase, collapsed whitespace), the first
  occurrence and its casing kept. strings of <= 1 char dropped. no cap on the count.
- zero concepts -> [caption.strip()], so every image has at least one concept.

Run:
    python concepts.py extract --data captions.jsonl --out concepts.jsonl --workers 2
    python concepts.py negatives --data captions.jsonl --out negatives.json --k 4 --seed 0
    python concepts.py score        # precision / recall on tests/data/concepts_gold.jsonl
    python concepts.py score --relations   # hand-judged precision of the relation negatives
"""

import json
import os
import random
import re
import sys
import time
import zlib
from dataclasses import dataclass
from multiprocessing import Pool

import nltk
from textblob.en.inflect import pluralize, singularize

import data
from cli import MissingFileError, UsageError

# -----------------------------------------------------------------------------
# tokenizing and tagging

# one alternative per token kind; order matters, the first that matches at a position wins
_TOKEN_RE = re.compile(r"""
    [^\W_]+(?=n['’]t\b)                          # "do" of "don't": PTB splits the negation off
  | n['’]t\b                                     # the "n't" itself
  | ['’](?:s|re|ve|ll|d|m)\b                     # possessive 's and other clitics
  | \d+(?:[.,:]\d+)+                             # numbers with separators: 3.5, 1,000, 10:30
  | [^\W_]+(?:-[^\W_]+|['’](?!(?:s|re|ve|ll|d|m)\b)[^\W_]+)*   # words, "high-rise", "o'clock"
  | \S                                           # any other symbol is a token of its own
""", re.X | re.I)

# word -> PTB tag, forced after tagging. empty: the lexicon tagger reads every word of the synthetic
# world (8 colours as JJ, 6 shapes as NN, in every caption template) correctly, see tests/test_concepts.py.
# add a word here only with a test that shows the mis-tag.
TAG_OVERRIDES = {}

_tagger = None  # (name, function tokens -> tags), built on first use so that importing is cheap


def _load_tagger():
    global _tagger
    if _tagger is None:
        try:
            # the perceptron needs its pickled weights; without them fall back to a lexicon tagger
            try:
                nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
            except LookupError:
                nltk.data.find("taggers/averaged_perceptron_tagger/")
            perceptron = nltk.tag.PerceptronTagger()
            _tagger = ("nltk-perceptron", lambda toks: [t for _, t in perceptron.tag(toks)])
        except Exception:
            # the lexicon + rules tagger that textblob's PatternTagger runs; we hand it our tokens directly
            # instead of PatternTagger.tag(" ".join(...)), which gives the same tags but re-splits a string
            from textblob.en import parser
            _tagger = ("textblob-pattern", lambda toks: [t for _, t in parser.find_tags(list(toks))])
    return _tagger


def tagger_name():
    """Which tagger runs: "nltk-perceptron" or "textblob-pattern"."""
    return _load_tagger()[0]


def tokenize(text):
    """Words, numbers, possessive 's / n't clitics and punctuation as separate tokens."""
    return _TOKEN_RE.findall(text)


# words that make the noun after them plural ("two", "several"); "the" is handled apart, see _opening_fix
PLURAL_QUANTIFIERS = frozenset("several many some few these those both multiple numerous various".split())

# plurals that often modify a following singular noun ("the sports car", "the clothes rack"); after "the",
# "<plural> <singular>" is read as a compound for these, and as subject + verb for every other plural
ATTRIBUTIVE_PLURALS = frozenset("sports arts clothes goods glasses news sales savings arms".split())


def _plural_opening(word, tag):
    w = word.lower()
    return w in PLURAL_QUANTIFIERS or (tag == "CD" and w not in ("one", "1"))


def _opening_fix(words, tags):
    """A caption that opens with a plural subject and a bare verb ("Two people ski down a slope", "The
    boys surf", "Several surfers paddle out") gets the verb tagged as a singular noun, and the chunk then
    swallows it ("Two people ski"). A plural quantifier or "the", a plural noun, then a singular noun that
    no noun follows: that noun is the verb. And after a plural quantifier, "<noun> <-s verb>" is a plural
    noun ("Three teddy bears"): a -s verb cannot agree with a plural subject."""
    if len(tags) < 3:
        return tags
    n3 = tags[3] if len(tags) > 3 else "."
    plural = _plural_opening(words[0], tags[0])
    the = words[0].lower() == "the" and words[1].lower() not in ATTRIBUTIVE_PLURALS
    # a noun or verb next means the singular noun heads a compound subject ("the dogs bowl is empty")
    if (plural or the) and tags[1] == "NNS" and tags[2] == "NN" and not n3.startswith(("NN", "VB", "MD", "POS")):
        tags[2] = "VBP"
    elif plural and tags[1] == "NN" and tags[2] == "VBZ":
        tags[2] = "NNS"
    return tags


def _context_fixes(words, tags):
    """Agreement rules for the lexicon tagger's commonest caption errors (found on the gold set's
    misses and in the opening "<quantifier> <plural> <verb>"), where a word that can be a noun or a verb
    gets its out-of-context tag."""
    tags = list(tags)
    for i in range(1, len(tags)):
        # a base-form verb never follows a determiner, possessive or adjective: "a sink", "brown bear"
        if tags[i] in ("VB", "VBP") and tags[i - 1] in ("DT", "PRP$", "POS", "JJ"):
            tags[i] = "NN"
        # "a/an/one <nouns> <plural>" cannot be one noun phrase: the plural is the verb ("a bus drives")
        if tags[i] == "NNS" and tags[i - 1] == "NN":
            j = i - 1
            while j > 0 and (tags[j].startswith(("NN", "JJ")) or tags[j] == "VBN"):
                j -= 1
            if words[j].lower() in ("a", "an", "one") and tags[j] in ("DT", "CD"):
                tags[i] = "VBZ"
    return _opening_fix(words, tags)


def tag(tokens):
    """[(word, PTB tag)] for a list of tokens: the tagger, then _context_fixes, then TAG_OVERRIDES."""
    tokens = list(tokens)
    if not tokens:
        return []
    tags = _context_fixes(tokens, _load_tagger()[1](tokens))
    return [(w, TAG_OVERRIDES.get(w.lower(), t)) for w, t in zip(tokens, tags)]


# -----------------------------------------------------------------------------
# chunking

# a possessor ("the dog's") may open a phrase; then determiners/numbers; then a participle right after a
# determiner ("a smiling woman", "a watering hole": without the determiner "people riding bikes" would
# chunk "riding bikes"); then modifiers, where an adjective may carry an adverb ("a very large dog") or
# a coordinated twin ("black and white"); then the head noun.
GRAMMAR = r"""
NP: {(<DT|PDT|PRP\$|CD>*(<RB.*>?<JJ.*>(<CC><JJ.*>)?|<VBN|NN.*>)*<NN.*><POS>)?(<DT|PDT|PRP\$|CD>+<VBG>|<DT|PDT|PRP\$|CD>*)(<RB.*>?<JJ.*>(<CC><JJ.*>)?|<VBN|NN.*>)*<NN.*>}
"""

# head nouns that name where a photo was taken rather than something in it (METHOD.md §2.1; the official
# prompt's example drops "a university"). lowercase, singular; plurals are matched too.
GENERIC_LOCATIONS = frozenset("""
home street school university college campus city town village country state place area location
neighborhood neighbourhood downtown world region
""".split())

# caption-site tags, compared with the chunk minus its leading determiners
BOILERPLATE = frozenset([
    "stock photo", "stock photos", "stock image", "stock picture", "stock photography", "stock footage",
    "stock illustration", "news photo", "file photo", "editorial photo", "royalty free stock photo",
    "vector illustration", "getty images",
])

# "<frame> of X" describes the picture, not a thing in it: the chunk is dropped, X is kept
FRAME_NOUNS = frozenset("photo photograph picture image shot snapshot view close-up closeup portrait".split())

# "<partitive> of X" reads as one concept ("a herd of elephants", "a slice of pizza")
PARTITIVES = frozenset("""
group herd flock pack team crowd bunch pile stack row line pair couple set lot number variety assortment
collection box bowl cup glass plate bottle basket bag piece slice bite loaf roll handful jar can tray pot
mug carton bouquet bundle
""".split())

_DET_TAGS = {"DT", "PDT", "PRP$", "CD"}


def _grammar_regex(grammar):
    """GRAMMAR's one chunk rule as a regex over a tag string "<DT><JJ><NN>", the way nltk.RegexpParser
    compiles it (tag_pattern2re_pattern), so the spans are the parser's without building its trees."""
    rule = grammar.strip()
    label, _, body = rule.partition(":")
    body = body.strip()
    assert label.strip() == "NP" and body.startswith("{") and body.endswith("}") and "\n" not in body, \
        "the fast chunker handles one chunk rule; keep GRAMMAR to one {...} line"
    return re.compile(nltk.chunk.regexp.tag_pattern2re_pattern(body[1:-1]))


_NP_RE = _grammar_regex(GRAMMAR)


def _chunk_spans(tags):
    """Token index ranges [start, end) of the GRAMMAR chunks, in caption order.

    One regex scan of the tag string: leftmost, non-overlapping matches, as nltk.RegexpParser's chunk
    rule finds them (tests/test_concepts.py checks equality with the parser on thousands of captions);
    the parser itself costs ~4x more than tagging, for the same spans.
    """
    text = "<" + "><".join(tags) + ">" if tags else ""
    spans = []
    for m in _NP_RE.finditer(text):
        s = text.count("<", 0, m.start())
        spans.append((s, s + m.group().count("<")))
    return spans


def _analyse(caption):
    """Tokens with character offsets, tags and chunk spans of one caption."""
    matches = list(_TOKEN_RE.finditer(caption))
    words = [m.group() for m in matches]
    tags = [t for _, t in tag(words)]
    return matches, words, tags, _chunk_spans(tags)


def _canon(text):
    return " ".join(text.lower().split())


def _is_generic_location(word):
    w = word.lower()
    return w in GENERIC_LOCATIONS or (w.endswith("s") and w[:-1] in GENERIC_LOCATIONS)


def _strip_determiners(words, tags):
    i = 0
    while i < len(words) - 1 and tags[i] in ("DT", "PDT"):
        i += 1
    return _canon(" ".join(words[i:]))


def extract_concepts(caption):
    """Noun-phrase concepts of one caption (rules in the module docstring)."""
    matches, words, tags, spans = _analyse(caption)
    # merge "<partitive> of <chunk>" into one span and mark "<frame> of" chunks for dropping
    merged = []
    for s, e in spans:
        if merged and merged[-1][2] == "partitive" and merged[-1][1] + 1 == s:
            merged[-1] = (merged[-1][0], e, "")
            continue
        followed_by_of = e < len(words) and words[e].lower() == "of"
        head = words[e - 1].lower()
        kind = ""
        if followed_by_of and head in PARTITIVES:
            kind = "partitive"
        elif followed_by_of and head in FRAME_NOUNS:
            kind = "frame"
        merged.append((s, e, kind))

    out, seen = [], set()
    for s, e, kind in merged:
        if kind == "frame":
            continue
        # the last token is the head noun; for a merged "X of Y" that is Y's head
        if _is_generic_location(words[e - 1]):
            continue
        if _strip_determiners(words[s:e], tags[s:e]) in BOILERPLATE:
            continue
        text = " ".join(caption[matches[s].start():matches[e - 1].end()].split())
        key = _canon(text)
        if len(key) <= 1 or key in seen:
            continue
        seen.add(key)
        out.append(text)
    return out if out else [caption.strip()]


def extract_concepts_batch(captions):
    """extract_concepts over a list, in order."""
    return [extract_concepts(c) for c in captions]


# -----------------------------------------------------------------------------
# scoring against the hand-labelled gold set

GOLD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "data", "concepts_gold.jsonl")
RELATIONS_GOLD_PATH = os.path.join(os.path.dirname(GOLD_PATH), "relations_gold.jsonl")


def score_chunker(records):
    """Phrase-level micro precision / recall / F1 and the exact-set rate, canonical matching.
    records: [{"caption": str, "concepts": [gold phrases]}]."""
    tp = n_pred = n_gold = exact = 0
    for r in records:
        pred = {_canon(p) for p in extract_concepts(r["caption"])}
        gold = {_canon(g) for g in r["concepts"]}
        tp += len(pred & gold)
        n_pred += len(pred)
        n_gold += len(gold)
        exact += pred == gold
    p = tp / max(n_pred, 1)
    r = tp / max(n_gold, 1)
    f1 = 2 * p * r / max(p + r, 1e-12)
    return dict(precision=p, recall=r, f1=f1, exact=exact / max(len(records), 1))


def score_relation_negatives(records):
    """Hand-judged precision of the relation negatives. records: [{"caption", "negatives": [{"type",
    "negative", "grammatical", "false_for_image"}]}], the labels of relation_negatives(caption) (seed 0).
    A label whose string the code no longer produces is not counted (counted in "stale"; the test fails on it)."""
    found = produced = gram = false = both = stale = 0
    for r in records:
        labels = {(x["type"], x["negative"]): x for x in r["negatives"]}
        negs = relation_negatives(r["caption"])
        found += bool(_relations(_Sentence(r["caption"])))
        stale += sum(key not in labels for key in negs) + sum(key not in set(negs) for key in labels)
        for key in negs:
            x = labels.get(key)
            if x is None:
                continue
            produced += 1
            gram += x["grammatical"]
            false += x["false_for_image"]
            both += x["grammatical"] and x["false_for_image"]
    n = max(produced, 1)
    return dict(captions=len(records), with_relation=found, negatives=produced, grammatical=gram / n,
                false=false / n, both=both / n, stale=stale)


# -----------------------------------------------------------------------------
# hard negatives (DeGLA, METHOD.md §3.8)

# adjective categories: a replacement comes from another group of the same category; "|" joins
# synonyms, which never replace each other (the first spelling is the one written)
ADJ_CATEGORIES = {
    "colour": "red green blue yellow purple orange white pink black brown gray|grey silver gold|golden",
    "size": "big|large|huge|giant|enormous small|little|tiny",
    "material": "wooden|wood metal|metallic plastic glass stone brick leather paper concrete ceramic",
    "age": "young old|elderly",
    "count": "two three four five six seven eight nine ten",
}

# curated antonyms (both directions are used): state adjectives live only here
ANTONYMS = """
big-small large-small tall-short long-short old-new young-old open-closed empty-full wet-dry clean-dirty
hot-cold light-dark bright-dark happy-sad fast-slow thick-thin heavy-light sunny-cloudy high-low wide-narrow
crowded-empty busy-quiet asleep-awake smooth-rough soft-hard straight-curly fat-thin dead-alive
modern-ancient cooked-raw sliced-whole lit-unlit full-half
"""

# nouns by coarse class: the COCO 80 categories grouped by supercategory (one-word names; multi-word ones
# by their head when it is unambiguous), plus scene nouns and the synthetic world's shapes. hypernyms
# ("person", "child", "puppy") are left out: swapping a word for its hypernym is not a negative.
NOUN_CLASSES = {
    "person": "man|guy|gentleman woman|lady boy girl baby|infant|toddler",
    "vehicle": "bicycle|bike car motorcycle|motorbike airplane|plane|aeroplane bus train truck boat",
    "outdoor": "bench hydrant",
    "animal": "bird cat dog horse sheep cow elephant bear zebra giraffe",
    "accessory": "backpack umbrella handbag|purse tie suitcase|luggage",
    "sports": "frisbee ski snowboard ball kite bat glove skateboard surfboard racket|racquet",
    "kitchen": "bottle glass cup|mug fork knife spoon bowl",
    "food": "banana apple sandwich orange broccoli carrot hotdog pizza donut|doughnut cake",
    "furniture": "chair couch|sofa bed table toilet",
    "electronic": "tv|television laptop mouse remote keyboard phone|cellphone",
    "appliance": "microwave oven toaster sink refrigerator|fridge",
    "indoor": "book clock vase scissors toothbrush",
    "indoor scene": "kitchen bathroom bedroom office restaurant classroom",
    "outdoor scene": "beach field park forest|woods mountain lake river ocean|sea desert road farm",
    "surface": "grass sand snow water dirt",
    "shapes": "circle square triangle ring star diamond",
}


def _siblings(classes):
    """word -> sorted replacement words (the first spelling of every other group of its class)."""
    table = {}
    for groups in classes.values():
        groups = [g.split("|") for g in groups.split()]
        for g in groups:
            others = sorted(o[0] for o in groups if o is not g)
            for w in g:
                assert w not in table, f"{w} is listed twice"
                table[w] = others
    return table


_NOUN_SIBLINGS = _siblings(NOUN_CLASSES)
_ADJ_REPLACEMENTS = _siblings(ADJ_CATEGORIES)
for _pair in ANTONYMS.split():
    _a, _b = _pair.split("-")
    _ADJ_REPLACEMENTS[_a] = sorted(set(_ADJ_REPLACEMENTS.get(_a, [])) | {_b})
    _ADJ_REPLACEMENTS[_b] = sorted(set(_ADJ_REPLACEMENTS.get(_b, [])) | {_a})
_COLOURS = {w for g in ADJ_CATEGORIES["colour"].split() for w in g.split("|")}

_COORDINATORS = {",", "and", "or", "&", ";"}
_NOUN_TAGS = {"NN", "NNS"}


class _Sentence:
    """A caption split into tokens and the whitespace before each, with tags and chunks."""

    def __init__(self, caption):
        matches, words, tags, spans = _analyse(caption.strip())
        self.words, self.tags, self.spans = words, tags, spans
        self.gaps = [""] + [caption.strip()[a.end():b.start()] for a, b in zip(matches, matches[1:])]
        # a sentence-initial capital is not part of the word: lower it while words move, restore at render.
        # captions open with "A", "Two", "Dog" far more often than with a name (the tagger calls "Dog" NNP
        # too), so any Title-case first word counts; acronyms ("TV") and "I" keep their case.
        first = words[0] if words else ""
        self.capital = first[:1].isupper() and first[1:] == first[1:].lower() and first != "I"
        if self.capital:
            self.words = [words[0][0].lower() + words[0][1:]] + words[1:]
            # the lexicon tags a capitalised "Dog" as a name; at the start it is the common noun
            self.tags = [{"NNP": "NN", "NNPS": "NNS"}.get(tags[0], tags[0])] + tags[1:]
        self.chunk_of = {i: c for c, (s, e) in enumerate(spans) for i in range(s, e)}

    def head(self, c):
        return self.spans[c][1] - 1

    def adjectives(self, c):
        """Adjective positions of chunk c (after any possessor), colour words included whatever their tag."""
        s, e = self.spans[c]
        pos = [i for i in range(s, e) if self.tags[i] == "POS"]
        s = pos[-1] + 1 if pos else s
        return [i for i in range(s, e - 1)
                if self.tags[i].startswith("JJ") or self.words[i].lower() in _COLOURS]

    def order_free(self, a, b):
        """True when chunks a < b stand in a plain list ("a red circle, a blue square and ..."),
        where exchanging two identical-looking phrases would not change the meaning."""
        between = range(self.spans[a][1], self.spans[b][0])
        return all(i in self.chunk_of or self.words[i].lower() in _COORDINATORS for i in between)

    def modifiers(self, c):
        s, e = self.spans[c]
        return [self.words[i].lower() for i in range(s, e - 1) if self.tags[i] not in ("DT", "PDT")]

    def render(self, words=None, gaps=None):
        words = list(self.words if words is None else words)
        gaps = self.gaps if gaps is None else gaps
        if self.capital and words:
            words[0] = words[0][:1].upper() + words[0][1:]
        return "".join(g + w for g, w in zip(gaps, words)).strip()


def _fix_articles(words, before):
    """a/an agree with the next word where an edit made a new pair ("a apple" -> "an apple"); pairs
    already in the caption (`before`, its words) stay as written."""
    old_pairs = {(a.lower(), b.lower()) for a, b in zip(before, before[1:])}
    out = list(words)
    for i in range(len(out) - 1):
        art, nxt = out[i].lower(), out[i + 1].lower()
        if art not in ("a", "an") or (art, nxt) in old_pairs:
            continue
        vowel = nxt[:1] in tuple("aeiou") and not nxt.startswith(("uni", "use", "usu", "one", "eu"))
        vowel = vowel or nxt.startswith(("hour", "honest", "heir"))
        new = "an" if vowel else "a"
        out[i] = new.capitalize() if out[i][0].isupper() else new
    return out


def _same_case(new, old):
    return new.capitalize() if old[:1].isupper() else new


def _is_word(w):
    return w[:1].isalnum() and w.lower() != "n't"


def reshuffle(sent, rng, vocab=None):
    """Permute the word tokens among the word positions; punctuation (the final one included) stays put."""
    slots = [i for i, w in enumerate(sent.words) if _is_word(w)]
    original = [sent.words[i] for i in slots]
    if len({w.lower() for w in original}) < 2:
        return None
    for _ in range(100):
        perm = rng.sample(original, len(original))
        if [w.lower() for w in perm] != [w.lower() for w in original]:
            words = list(sent.words)
            for i, w in zip(slots, perm):
                words[i] = w
            return sent.render(words)
    return None


def swap_nouns(sent, rng, vocab=None):
    """Exchange the head nouns of two chunks; determiners and adjectives stay where they are."""
    heads = [c for c in range(len(sent.spans)) if sent.tags[sent.head(c)] in _NOUN_TAGS]
    pairs = []
    for x, a in enumerate(heads):
        for b in heads[x + 1:]:
            wa, wb = sent.words[sent.head(a)].lower(), sent.words[sent.head(b)].lower()
            if wa == wb:
                continue
            # in a plain list, "a red circle and a red square" swapped says the same thing
            if sent.order_free(a, b) and sent.modifiers(a) == sent.modifiers(b):
                continue
            pairs.append((a, b))
    if not pairs:
        return None
    # prefer nouns of the same number so that "two dogs and a cat" does not become "two cat and a dogs"
    same = [(a, b) for a, b in pairs if sent.tags[sent.head(a)] == sent.tags[sent.head(b)]]
    a, b = rng.choice(same or pairs)
    i, j = sent.head(a), sent.head(b)
    words = list(sent.words)
    words[i], words[j] = sent.words[j], sent.words[i]
    return sent.render(_fix_articles(words, sent.words))


def swap_adjectives(sent, rng, vocab=None):
    """Exchange adjectives of two different nouns; with adjectives on one noun only, move one of them
    to another noun ("a gray cat on a bench" -> "a cat on a gray bench")."""
    n = len(sent.spans)
    adjs = {c: sent.adjectives(c) for c in range(n)}

    def changes_meaning(a, b):
        a, b = min(a, b), max(a, b)
        same_head = sent.words[sent.head(a)].lower() == sent.words[sent.head(b)].lower()
        return not (same_head and sent.order_free(a, b))

    swaps = [(i, j) for a in range(n) for b in range(a + 1, n) if changes_meaning(a, b)
             for i in adjs[a] for j in adjs[b] if sent.words[i].lower() != sent.words[j].lower()]
    if swaps:
        i, j = rng.choice(swaps)
        words = list(sent.words)
        words[i], words[j] = sent.words[j], sent.words[i]
        return sent.render(_fix_articles(words, sent.words))
    moves = [(i, b) for a in range(n) for i in adjs[a] for b in range(n)
             if b != a and not adjs[b] and sent.tags[sent.head(b)] in _NOUN_TAGS and changes_meaning(a, b)]
    if not moves:
        return None
    i, b = rng.choice(moves)
    s, e = sent.spans[b]
    k = s
    while k < e - 1 and (sent.tags[k] in _DET_TAGS or "POS" in sent.tags[k:e]):
        k += 1  # insert after the determiners (and after a possessor) of the target chunk
    words, gaps = list(sent.words), list(sent.gaps)
    # the inserted word takes the gap of the word it goes before, which then gets one space
    words.insert(k, sent.words[i])
    gaps.insert(k, gaps[k])
    gaps[k + 1] = " "
    r = i + (k <= i)  # remove the moved adjective; the word after it keeps its own gap
    del words[r], gaps[r]
    gaps[0] = ""
    return sent.render(_fix_articles(words, sent.words), gaps)


def _options(table, word, vocab):
    """Replacements of a word, limited to vocab when one is given."""
    return [w for w in table.get(word, ()) if vocab is None or w in vocab]


def replace_adjectives(sent, rng, vocab=None):
    """Put another adjective of the same category (colour, size, material, age, count) or an antonym."""
    cands = [i for i, w in enumerate(sent.words) if _options(_ADJ_REPLACEMENTS, w.lower(), vocab)
             and (sent.tags[i].startswith("JJ") or sent.tags[i] == "CD"
                  or (i in sent.chunk_of and i != sent.head(sent.chunk_of[i])))]
    if not cands:
        return None
    i = rng.choice(cands)
    words = list(sent.words)
    words[i] = _same_case(rng.choice(_options(_ADJ_REPLACEMENTS, words[i].lower(), vocab)), words[i])
    return sent.render(_fix_articles(words, sent.words))


def _singular(word):
    w = word.lower()
    return w if w in _NOUN_SIBLINGS else singularize(w)


def replace_nouns(sent, rng, vocab=None):
    """Replace one head noun by a sibling of the same coarse class ("dog" -> "horse", "circle" -> "star")."""
    cands = [sent.head(c) for c in range(len(sent.spans))
             if sent.tags[sent.head(c)] in _NOUN_TAGS
             and _options(_NOUN_SIBLINGS, _singular(sent.words[sent.head(c)]), vocab)]
    if not cands:
        return None
    i = rng.choice(cands)
    word = sent.words[i]
    lemma = _singular(word)
    new = rng.choice(_options(_NOUN_SIBLINGS, lemma, vocab))
    if word.lower() != lemma:
        new = pluralize(new)
    words = list(sent.words)
    words[i] = _same_case(new, word)
    return sent.render(_fix_articles(words, sent.words))


# -----------------------------------------------------------------------------
# relation negatives (opt-in: hard_negatives(..., relations=True), METHOD.md §3.8)

# spatial relations: synonym groups ("|"; never a replacement for each other), each beside its converse group.
# A group's spellings are aligned with its converse's: a spelling's converse is the one at the same place,
# else the first ("on" <-> "under", "above" <-> "below", "atop" -> "under"). "on" and "above" share a group:
# a cup on a table is above it, so one never replaces the other.
SPATIAL_RELATIONS = (
    ("on|above|on top of|over|atop|upon", "under|below|beneath|underneath"),
    ("left of|to the left of", "right of|to the right of"),
    ("in front of", "behind"),
    ("inside|inside of|within", "outside|outside of"),
)
# symmetric: "a next to b" says "b next to a", so these are never swapped; no converse, replaced by a
# vertical relation only, and never a replacement (left of, in front of ... can be "next to" at the same time)
SYMMETRIC_RELATIONS = "next to|near|beside|alongside|close to|near to"
# actions of a subject on an object, as captions write them (present participles); no converses
ACTION_RELATIONS = """
holding|carrying|holding_up|grabbing|clutching riding wearing eating|biting|chewing|chewing_on
pulling|towing|dragging pushing chasing throwing|tossing catching kicking feeding petting|hugging|cuddling
watching|looking_at|staring_at flying playing_with drinking hitting|swinging cutting|slicing reading
"""  # "_" joins the words of a multiword action
_BE = ("is", "are")
# "<noun> of NP" continues the phrase around a relation: quantities ("a cup of coffee") and parts
# ("the side of a building")
_PART_NOUNS = frozenset("side top edge front back middle center centre corner end bottom part half".split())
_SUBJECT_LINKS = ("in", "with")  # "a man in a red shirt holding a bat": the subject is the whole phrase


@dataclass(frozen=True)
class _RelGroup:
    spellings: tuple      # lowercase phrases, the first is written
    cls: str              # "spatial" | "action"
    converse: object      # the converse _RelGroup's index in _REL_GROUPS, or None
    symmetric: bool = False


def _build_relation_lexicon():
    groups, lexicon = [], {}  # lexicon: phrase (tuple of words) -> group index

    def add(spellings, cls, converse=None, symmetric=False):
        groups.append(_RelGroup(tuple(spellings), cls, converse, symmetric))
        for s in spellings:
            key = tuple(s.split())
            assert key not in lexicon, f"relation {s!r} listed twice"
            lexicon[key] = len(groups) - 1

    for a, b in SPATIAL_RELATIONS:
        n = len(groups)
        add(a.split("|"), "spatial", n + 1)
        add(b.split("|"), "spatial", n)
    add(SYMMETRIC_RELATIONS.split("|"), "spatial", symmetric=True)
    for g in ACTION_RELATIONS.split():
        add([s.replace("_", " ") for s in g.split("|")], "action")
    return tuple(groups), lexicon


_REL_GROUPS, _REL_LEXICON = _build_relation_lexicon()
_REL_MAX_WORDS = max(map(len, _REL_LEXICON))
_VERTICAL = (0, 1)  # the groups of SPATIAL_RELATIONS[0]
_ACTION_GROUPS = frozenset(i for i, g in enumerate(_REL_GROUPS) if g.cls == "action")


@dataclass(frozen=True)
class _Relation:
    """token ranges [start, end) of "LEFT REL RIGHT" in a _Sentence; be: index of "is"/"are" or None"""
    left: tuple
    rel: tuple
    right: tuple
    group: int
    be: object = None


def _match_relation(words, tags):
    """(offset, length, group) of the relation that the words between two phrases are, or None:
    ["is"|"are"] REL, or ["is"|"are"] <verb> SPATIAL ("sitting on top of", "parked next to")."""
    i = 1 if words and words[0] in _BE else 0
    rest = tuple(words[i:])
    if rest in _REL_LEXICON:
        return i, len(rest), _REL_LEXICON[rest]
    if len(rest) >= 2 and tags[i].startswith("VB") and rest[0] not in _BE:
        g = _REL_LEXICON.get(rest[1:])
        if g is not None and _REL_GROUPS[g].cls == "spatial":
            return i + 1, len(rest) - 1, g
    return None


def _relations(sent):
    """Every "NP REL NP" of a sentence, left to right (cached on the sentence). For each chunk the relation
    to a later chunk whose in-between words are a relation (longest phrase wins, so "sitting on top of a
    laptop" is not "on" + "top"); the left phrase takes in "X in/with Y" and "X of Y" for quantity and
    part nouns, the right phrase "X of Y" for those nouns."""
    cached = getattr(sent, "_rels", None)
    if cached is not None:
        return cached
    words = [w.lower() for w in sent.words]
    spans, out = sent.spans, []

    def of_continues(c):  # chunk c, then "of", then the next chunk right after
        return (c + 1 < len(spans) and spans[c][1] < len(words) and words[spans[c][1]] == "of"
                and spans[c + 1][0] == spans[c][1] + 1 and words[spans[c][1] - 1] in PARTITIVES | _PART_NOUNS)

    def trimmed_end(a):  # a chunk's end, less a relation word the tagger folded into it
        s1, e1 = spans[a]
        if e1 - s1 > 1 and words[e1 - 1] in ("left", "right") and e1 < len(words) and words[e1] == "of":
            return e1 - 1  # the tagger reads "right" as a noun: "a car right" + "of a truck"
        if (e1 - s1 > 2 and a + 1 < len(spans) and spans[a + 1][0] == e1
                and _REL_LEXICON.get((words[e1 - 1],)) in _ACTION_GROUPS):
            return e1 - 1  # and "reading" as a noun: "an old man reading" + "a newspaper"
        return e1

    ends = [trimmed_end(a) for a in range(len(spans))]  # the same as a left and as a right phrase
    for a in range(len(spans)):
        s1, e1 = spans[a][0], ends[a]
        best = None
        for b in range(a + 1, len(spans)):
            s2 = spans[b][0]
            if s2 - e1 > _REL_MAX_WORDS + 2:
                break
            m = _match_relation(words[e1:s2], sent.tags[e1:s2])
            if m is not None and (best is None or m[1] > best[1][1]):
                best = (b, m)
        if best is None:
            continue
        b, (off, length, g) = best
        if spans[b][1] < len(words) and sent.tags[spans[b][1]] == "VB":
            continue  # a base verb right after a phrase is a mis-tagged noun ("a teddy" + "bear")
        ls, c = s1, a
        while c > 0:  # the left phrase grows over "X in Y", "X with Y", "<quantity/part> of Y"
            between = words[spans[c - 1][1]:spans[c][0]]
            if (len(between) == 1 and between[0] in _SUBJECT_LINKS) or (between == ["of"] and of_continues(c - 1)):
                c -= 1
                ls = spans[c][0]
            else:
                break
        s2, e2 = spans[b][0], ends[b]
        c = b
        while of_continues(c):
            c += 1
            e2 = ends[c]
        be = e1 if words[e1] in _BE else None
        out.append(_Relation((ls, e1), (e1 + off, e1 + off + length), (s2, e2), g, be))
    sent._rels = out
    return out


def _is_plural(sent, s, e):
    head = sent.tags[e - 1]
    first = sent.words[s]
    return head in ("NNS", "NNPS") or _plural_opening(first, sent.tags[s])


def swap_relation_args(sent, rng, vocab=None):
    """Exchange the two phrases around a relation ("a red circle left of a blue square" -> "a blue square
    left of a red circle"); never around a symmetric relation or between two equal phrases. "is"/"are"
    before the relation follows the new subject's number."""
    rels = [r for r in _relations(sent) if not _REL_GROUPS[r.group].symmetric
            and _canon(" ".join(sent.words[slice(*r.left)])) != _canon(" ".join(sent.words[slice(*r.right)]))]
    if not rels:
        return None
    r = rng.choice(rels)
    (ls, le), (rs, re_) = r.left, r.right
    w, g = sent.words, sent.gaps
    words = w[:ls] + w[rs:re_] + w[le:rs] + w[ls:le] + w[re_:]
    gaps = g[:ls] + [g[ls]] + g[rs + 1:re_] + [g[le]] + g[le + 1:rs] + [g[rs]] + g[ls + 1:le] + g[re_:]
    if r.be is not None:
        be = ls + (re_ - rs) + (r.be - le)  # where "is"/"are" sits now
        words[be] = _same_case("are" if _is_plural(sent, rs, re_) else "is", words[be])
    return sent.render(_fix_articles(words, sent.words), gaps)


def _spelling_ok(spelling, vocab):
    return vocab is None or all(x in vocab for x in spelling.split())


def _relation_options(phrase, vocab=None):
    """Replacements of a relation phrase: its converse alone when there is one (a converse is always false
    where the relation holds), else the first spelling of every other group of its class (a symmetric
    relation takes the vertical ones only: "next to" -> "on", "under"). Every word in vocab when one is given."""
    g = _REL_LEXICON[tuple(phrase.split())]
    group = _REL_GROUPS[g]
    if group.converse is not None:
        conv = _REL_GROUPS[group.converse].spellings
        pos = group.spellings.index(phrase)
        ordered = ([conv[pos]] if pos < len(conv) else []) + list(conv)
        ok = [s for s in ordered if _spelling_ok(s, vocab)]
        if ok:
            return [ok[0]]
    out = []
    for i, other in enumerate(_REL_GROUPS):
        if i == g or other.cls != group.cls or other.symmetric or (group.symmetric and i not in _VERTICAL):
            continue
        ok = [s for s in other.spellings if _spelling_ok(s, vocab)]
        if ok:
            out.append(ok[0])
    return out


def replace_relation(sent, rng, vocab=None):
    """Put the relation's converse ("on" -> "under", "left of" -> "right of"), or, without one (or without
    its words in vocab), another relation of its class ("left of" -> "above", "riding" -> "pulling");
    never a synonym ("below" / "under" / "beneath")."""
    rels = []
    for r in _relations(sent):
        opts = _relation_options(" ".join(x.lower() for x in sent.words[slice(*r.rel)]), vocab)
        if opts:
            rels.append((r, opts))
    if not rels:
        return None
    r, opts = rng.choice(rels)
    new = rng.choice(opts).split()
    s, e = r.rel
    words = sent.words[:s] + new + sent.words[e:]
    gaps = sent.gaps[:s] + [sent.gaps[s]] + [" "] * (len(new) - 1) + sent.gaps[e:]
    return sent.render(_fix_articles(words, sent.words), gaps)


def relation_negatives(caption, seed=0, vocab=None):
    """[(type, negative)] of the two relation types, each with its own generator seeded as hard_negatives
    seeds one, types that do not apply left out: what the relation gold set (RELATIONS_GOLD_PATH) labels."""
    sent = _Sentence(caption)
    out = []
    for name in ("swap_relation_args", "replace_relation"):
        rng = random.Random(seed * 1_000_003 + zlib.crc32(caption.encode("utf-8")))
        neg = NEGATIVE_TYPES[name](sent, rng, vocab)
        if neg is not None:
            out.append((name, neg))
    return out


def relation_concepts(captions, seed=0, vocab=None, negatives=True):
    """For --relation_concepts and --concept_negatives (METHOD.md §2.7): per caption, its "subject relation
    object" phrases as concepts ("a red circle left of a blue square"; determiners kept, as in every concept),
    and per caption the negative concepts made from those phrases by the two relation types (the phrases
    around the relation swapped, the relation replaced): ([[phrase]], [[negative]]), no duplicates;
    negatives=False leaves the negative lists empty (they cost most of the time)."""
    phrases, negs = [], []
    for cap in captions:
        sent = _Sentence(cap)  # (its first word already in lower case when the caption opens with a capital)
        mine = list(dict.fromkeys("".join(g + w for g, w in zip([""] + sent.gaps[r.left[0] + 1:r.right[1]],
                                                                 sent.words[r.left[0]:r.right[1]])) for r in _relations(sent)))
        made = [n for p in mine for _, n in relation_negatives(p, seed, vocab)] if negatives else []
        seen = {_canon(p) for p in mine}
        negs.append([n for n in dict.fromkeys(made) if _canon(n) not in seen])
        phrases.append(mine)
    return phrases, negs


def add_relation_concepts(annotations, captions, seed=0, vocab=None, phrases=True, negatives=True, drop=None, log=print):
    """annotations["concepts"] (each caption's noun phrases) gains its relation phrases (phrases=True) and
    annotations["concept_negatives"] their negative concepts (negatives=True), less any that drop(text) names
    (a held-out fact). In place; the counts go to log."""
    rel, neg = relation_concepts(captions, seed, vocab, negatives)
    if phrases:
        annotations["concepts"] = [c + r for c, r in zip(annotations["concepts"], rel)]
    if negatives:
        annotations["concept_negatives"] = [[n for n in ns if not (drop and drop(n))] for ns in neg]
    log(f"relation concepts: {sum(map(bool, rel)) / max(1, len(rel)):.0%} of captions state a relation"
        + (f"; {sum(map(len, annotations['concept_negatives'])) / max(1, len(neg)):.2f} negative concepts per caption"
           if negatives else ""))


NEGATIVE_TYPES = {
    "reshuffle": reshuffle, "swap_nouns": swap_nouns, "swap_adjectives": swap_adjectives,
    "replace_adjectives": replace_adjectives, "replace_nouns": replace_nouns,
    "swap_relation_args": swap_relation_args, "replace_relation": replace_relation,
}

# one slot per negative, each a fallback chain (METHOD.md §3.8): the first type that yields a new,
# distinct string fills the slot. swap nouns falls back to swap adjectives then replace nouns (replace
# adjectives owns slot 3); every substitution falls back to reshuffle.
SLOT_CHAINS = (
    ("reshuffle",),
    ("swap_nouns", "swap_adjectives", "replace_nouns", "reshuffle"),
    ("replace_adjectives", "replace_nouns", "reshuffle"),
    ("replace_nouns", "reshuffle"),
)
# relations=True: a caption with a relation gets a swap of the phrases around it first in slot 2 and a
# replaced relation first in slot 4; without a relation both types return None (drawing nothing from the
# generator), so such a caption gets exactly the SLOT_CHAINS negatives
RELATION_SLOT_CHAINS = tuple(("swap_relation_args",) + c if j == 1 else ("replace_relation",) + c if j == 3 else c
                             for j, c in enumerate(SLOT_CHAINS))
_TRIES = 10  # draws per type before falling back, for when a draw repeats an earlier negative


def hard_negatives(caption, k=4, seed=0, vocab=None, relations=False):
    """Up to k rule-based hard negatives of a caption, in SLOT_CHAINS order (slots past the 4th cycle
    through the chains again). Each differs from the caption and from the others (canonical compare).
    When a slot cannot be filled it is skipped, so fewer than k come back and the caller decides
    (the negatives CLI drops such records; METHOD.md §3.8). Same arguments -> same output.
    vocab: optional set of lowercase words the replacements must come from (e.g. a word-level text
    tower's vocabulary, so that the synthetic world gets no unknown colours).
    relations: use RELATION_SLOT_CHAINS (relation negatives in slots 2 and 4 when the caption has a relation)."""
    # crc32, not hash(): python salts str hashes per process
    rng = random.Random(seed * 1_000_003 + zlib.crc32(caption.encode("utf-8")))
    sent = _Sentence(caption)
    seen = {_canon(caption)}
    out = []
    chains = RELATION_SLOT_CHAINS if relations else SLOT_CHAINS
    for slot in range(k):
        for name in chains[slot % len(chains)]:
            neg = None
            for _ in range(_TRIES):
                cand = NEGATIVE_TYPES[name](sent, rng, vocab)
                if cand is None:
                    break  # this type does not apply to the caption
                if _canon(cand) not in seen:
                    neg = cand
                    break
            if neg is not None:
                seen.add(_canon(neg))
                out.append(neg)
                break
    return out


# -----------------------------------------------------------------------------
# files: captions in, concept cache and negatives out


def _pool_map(fn, items, workers, desc):
    from tqdm import tqdm
    chunksize = max(1, min(512, len(items) // (8 * max(workers, 1)) or 1))
    quiet = not sys.stderr.isatty()  # a bar redirected to a log file is one endless line
    if workers <= 1:
        return [fn(x) for x in tqdm(items, desc=desc, mininterval=1.0, disable=quiet)]
    with Pool(workers) as pool:  # imap keeps the input order
        return list(tqdm(pool.imap(fn, items, chunksize=chunksize), total=len(items), desc=desc, mininterval=1.0,
                         disable=quiet))


def write_concept_cache(path, captions, concepts, keys=None):
    """one JSON line a record: {"i", "caption", "concepts"}, or {"key", "caption", "concepts"} for shards"""
    with open(path, "w", encoding="utf-8") as f:
        for i, (c, cs) in enumerate(zip(captions, concepts)):
            head = {"key": keys[i]} if keys is not None else {"i": i}
            f.write(json.dumps({**head, "caption": c, "concepts": cs}, ensure_ascii=False) + "\n")


def _check_concepts(cs, where):
    if not isinstance(cs, list) or not cs or not all(isinstance(c, str) for c in cs):
        raise UsageError(f"{where}: \"concepts\" must be a non-empty list of strings")
    return cs


def load_concept_cache(path, captions, keys=None):
    """Concept lists from a cache written by `concepts.py extract`, checked against the data's captions.

    keys=None (JSONL/CSV data): record count, index and caption text must match, line by line.
    keys given (shards): records are joined by sample key, in any order; a key of the data that the cache
    lacks, a cache that matches none of the data, or a caption that differs is a UsageError naming it.
    """
    if keys is not None:
        return _load_keyed_cache(path, captions, keys)
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{n}: bad JSON line ({err})") from None
            i = n - 1
            if i >= len(captions):
                raise UsageError(f"{path}:{n}: more records than the {len(captions)} captions of the data")
            if not isinstance(rec, dict) or rec.get("i") != i:
                raise UsageError(f"{path}:{n}: expected a record with \"i\": {i}")
            if rec.get("caption") != captions[i]:
                raise UsageError(f"{path}:{n}: cached caption {rec.get('caption')!r} != data caption {captions[i]!r}")
            out.append(_check_concepts(rec.get("concepts"), f"{path}:{n}"))
    if len(out) != len(captions):
        raise UsageError(f"{path}: {len(out)} records but the data has {len(captions)} captions")
    return out


def _load_keyed_cache(path, captions, keys):
    by_key = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{n}: bad JSON line ({err})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                raise UsageError(f"{path}:{n}: no \"key\" (a cache for shards is keyed by sample key); "
                                 f"write it with python concepts.py extract --data=<the shards>")
            by_key[rec["key"]] = (n, rec)
    if not any(k in by_key for k in keys):
        raise UsageError(f"{path}: none of its {len(by_key)} keys is a sample key of the data; "
                         f"it was written for other shards")
    out = []
    for key, caption in zip(keys, captions):
        if key not in by_key:
            raise UsageError(f"{path}: no record for sample key {key!r}; re-run python concepts.py extract on these shards")
        n, rec = by_key[key]
        if rec.get("caption") != caption:
            raise UsageError(f"{path}:{n}: key {key!r}: cached caption {rec.get('caption')!r} != data caption {caption!r}")
        out.append(_check_concepts(rec.get("concepts"), f"{path}:{n}"))
    return out


def read_negatives_file(path, k=4):
    """(records, negatives): the records of an official-schema file ([{"image_id", "original", "enhanced"}],
    a "key" too when written for shards) and the first k negatives of each, in file order. UsageError names
    the file and record index on any shape problem. The file is parsed here and only here."""
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: bad JSON ({err})") from None
    if not isinstance(records, list):
        raise UsageError(f"{path}: expected a JSON list of records")
    out = []
    for r, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise UsageError(f"{path}: record {r} is not an object")
        missing = [key for key in ("image_id", "original", "enhanced") if key not in rec]
        if missing:
            raise UsageError(f"{path}: record {r} lacks {', '.join(missing)}")
        neg = rec["enhanced"]
        if not isinstance(neg, list) or not all(isinstance(s, str) for s in neg):
            raise UsageError(f"{path}: record {r}: \"enhanced\" must be a list of strings")
        if len(neg) < k:
            raise UsageError(f"{path}: record {r} has {len(neg)} negatives, fewer than k={k}")
        out.append(neg[:k])
    return records, out


def load_negatives(path, captions=None, k=4):
    """the first k negatives of each record of a negatives file; with `captions`, the file must hold one
    record per caption, in order, its "original" equal to the caption"""
    records, negatives = read_negatives_file(path, k)
    if captions is not None and len(records) != len(captions):
        raise UsageError(f"{path}: {len(records)} records but {len(captions)} captions given")
    for r, rec in enumerate(records if captions is not None else ()):
        if rec["original"] != captions[r]:
            raise UsageError(f"{path}: record {r}: original {rec['original']!r} != caption {captions[r]!r}")
    return negatives


def negatives_for(captions, k, seed, path="", vocab=None, keys=None, data="", log=print, relations=False):
    """DeGLA's K negatives per caption -> (negatives of the kept captions, kept indices).

    From the file at `path` (the official shape) or generated by hard_negatives with `seed`. A file is joined
    to the data by sample key when both have keys (shards; every key must be in the file), else by its
    "original" caption (the first record of a repeated caption wins; captions missing from the file are
    generated). A file that matches none of the data is an error. A caption with fewer than K distinct
    negatives is dropped, as the negatives command drops it: a repeated negative would count twice in
    every softmax. relations: generated negatives include relation negatives (hard_negatives).
    """
    t0 = time.time()
    given, ids = {}, captions  # ids: what the file is joined by
    if path:
        records, from_file = read_negatives_file(path, k)
        keyed = keys is not None and all("key" in rec for rec in records)
        ids = keys if keyed else captions
        for rec, negs in zip(records, from_file):
            given.setdefault(rec["key"] if keyed else rec["original"], negs)
        if not any(i in given for i in ids):
            raise UsageError(f"--negatives={path}: none of its {len(records)} records matches the data "
                             f"(joined by {'sample key' if keyed else 'caption'}); write it for this data with "
                             f"python concepts.py negatives --data={data}")
        missing = next((key for key in keys if key not in given), None) if keyed else None
        if missing is not None:
            raise UsageError(f"--negatives={path}: no record for sample key {missing!r}; "
                             f"re-run python concepts.py negatives on these shards")
    negatives = [given[i] if i in given else hard_negatives(c, k, seed, vocab, relations) for i, c in zip(ids, captions)]
    keep = [i for i, n in enumerate(negatives) if len(n) >= k]
    n_file = sum(i in given for i in ids)
    log(f"negatives: {len(captions)} captions, {n_file} from {path or 'no file'}, "
        f"{len(captions) - n_file} generated (tagger {tagger_name()}) in {time.time() - t0:.1f}s; "
        f"{len(captions) - len(keep)} dropped with fewer than K={k} distinct negatives")
    if not keep:
        raise UsageError(f"no caption has {k} distinct hard negatives; lower --num_negatives")
    return [negatives[i] for i in keep], keep


def _negatives_job(args):
    caption, k, seed, relations = args
    return hard_negatives(caption, k=k, seed=seed, relations=relations)


# -----------------------------------------------------------------------------
# command line


@dataclass
class ExtractConfig:
    data: str = ""                   # JSONL/CSV with a caption column, or WebDataset shards (a brace pattern, a folder or a .txt list); required
    out: str = ""                    # the JSONL cache to write; required
    workers: int = 1                 # processes (indexing shards, then captions)
    caption_key: str = "caption"     # the caption column; for shards "caption" = {key}.txt, else that field of {key}.json


@dataclass
class NegativesConfig(ExtractConfig):
    k: int = 4                       # hard negatives per caption (captions with fewer distinct ones are dropped)
    seed: int = 0                    # seed of the negative generator
    relations: bool = False          # relation negatives in slots 2 and 4 (train.py --relation_negatives; METHOD.md §3.8)


@dataclass
class ScoreConfig:
    relations: bool = False          # score the relation negatives on tests/data/relations_gold.jsonl instead


def score_main(args):
    if args.relations:
        with open(RELATIONS_GOLD_PATH, encoding="utf-8") as f:
            gold = [json.loads(line) for line in f if line.strip()]
        s = score_relation_negatives(gold)
        print(f"tagger {tagger_name()} | {s['captions']} captions, {s['with_relation']} with a relation found | "
              f"{s['negatives']} relation negatives: grammatical {s['grammatical']:.3f} false {s['false']:.3f} "
              f"both {s['both']:.3f}" + (f" | {s['stale']} labels stale (relabel)" if s["stale"] else ""))
        return
    with open(GOLD_PATH, encoding="utf-8") as f:
        gold = [json.loads(line) for line in f if line.strip()]
    s = score_chunker(gold)
    print(f"tagger {tagger_name()} | {len(gold)} captions | precision {s['precision']:.3f} "
          f"recall {s['recall']:.3f} f1 {s['f1']:.3f} exact {s['exact']:.3f}")


def extract_main(args):
    records, keys, captions = _captions_of(args)
    t0 = time.perf_counter()
    concepts = _pool_map(extract_concepts, captions, args.workers, "concepts")
    dt = time.perf_counter() - t0
    write_concept_cache(args.out, captions, concepts, keys)
    mean = sum(map(len, concepts)) / max(len(concepts), 1)
    print(f"tagger {tagger_name()} | {len(captions) / max(dt, 1e-9):.0f} captions/s with {args.workers} "
          f"worker(s) | {mean:.2f} concepts per caption | wrote {args.out}")


def negatives_main(args):
    records, keys, captions = _captions_of(args)
    t0 = time.perf_counter()
    jobs = [(c, args.k, args.seed, args.relations) for c in captions]
    negs = _pool_map(_negatives_job, jobs, args.workers, "negatives")
    dt = time.perf_counter() - t0
    # a caption that cannot give k distinct negatives is dropped from the file (METHOD.md §3.8); shards add
    # the sample key, by which training joins the file (the official reader ignores the extra field)
    out = [{"image_id": i if data.image_id(r) is None else data.image_id(r), **({"key": keys[i]} if keys else {}), "original": c, "enhanced": n}
           for i, (r, c, n) in enumerate(zip(records, captions, negs)) if len(n) >= args.k]
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    print(f"tagger {tagger_name()} | {len(captions) / max(dt, 1e-9):.0f} captions/s with {args.workers} "
          f"worker(s) | {len(out)} records written, {len(captions) - len(out)} dropped (< {args.k} "
          f"distinct negatives) | wrote {args.out}")


def _captions_of(args):
    missing = [f"--{n}" for n in ("data", "out") if not getattr(args, n)]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}; see --help")
    records, keys = _read_source(args.data, args.caption_key, args.out, args.workers)
    captions = [r[args.caption_key] for r in records]
    print(f"tagger {tagger_name()} | {len(captions)} captions from {args.data}", file=sys.stderr)
    return records, keys, captions


COMMANDS = {"extract": (extract_main, ExtractConfig, "write a concept cache (JSONL) for a caption file or shards"),
            "negatives": (negatives_main, NegativesConfig, "write hard negatives in the official DeGLA schema"),
            "score": (score_main, ScoreConfig, "precision / recall of the chunker on the gold set; --relations: "
                                               "precision of the relation negatives")}


def main(argv=None):
    from cli import run_command
    run_command(COMMANDS, doc="noun-phrase concepts and rule-based hard negatives", argv=argv)


def _read_source(spec, caption_key, out, workers):
    """(records [{caption_key: caption, "image_id"?}], sample keys or None) of a JSONL/CSV file or of shards"""
    import shards
    if not shards.is_shards(spec):
        if not os.path.isfile(spec):
            raise MissingFileError(f"--data={spec}: no such file; give a JSONL/CSV caption file or WebDataset shards")
        rows, _ = data.read_rows(spec, (caption_key,))
        return [row for _, row in rows], None
    # shards: the cached index (built here in parallel over shards if missing) holds captions and keys;
    # bad samples are left out, as training leaves them out
    index = shards.load_index(spec, caption_key, os.path.dirname(os.path.abspath(out)), workers)
    if index.problems:
        print(f"{len(index.problems)} bad samples or shards left out (first: {index.problems[0]})", file=sys.stderr)
    records = [{caption_key: c, **({"image_id": iid} if iid is not None else {})}
               for c, iid in zip(index.captions, index.image_ids)]
    return records, index.keys


if __name__ == "__main__":
    main()
