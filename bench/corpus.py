"""A deterministic synthetic corpus for benchmarks: English-like cubes and queries over a Zipfian vocabulary."""

from __future__ import annotations

import itertools
import random
from bisect import bisect
from collections.abc import Iterator

# Common English content words hold the top ranks, so text reads like prose and the stemmer sees
# real inflections; generated pseudo-words make the long tail. Within each word class, word i has
# weight 1/(i+ZIPF_Q)^ZIPF_S (Zipf-Mandelbrot): the offset stands for the function words that rank
# above every content word in real text, so the commonest noun is in about a fifth of the cubes.
ZIPF_S = 1.1
ZIPF_Q = 10
TAIL_WORDS = 30000

NOUNS = """time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government number night
point home water room mother area money story fact month lot right study book eye job word business
issue side kind head house service friend father power hour game line end member law car city community
name president team minute idea kid body information back parent face others level office door health
person art war history party result change morning reason research girl guy moment air teacher force
education foot boy age policy music market sense nation plan college interest death experience effect
class control care field development role effort rate heart drug show leader light voice wife police
mind price report decision son view relationship town road arm difference value building action model
season society tax director position player record paper space ground form event official matter center
couple site project activity star table need court oil situation cost industry figure street image phone
data picture practice piece land product doctor wall patient worker news test movie north love support
technology step baby computer type attention film tree source organization hair window evidence population
site budget meeting review deadline server release customer memory agent note summary task schedule
database query index cache network request response error message file folder document draft invoice
contract account password trip flight hotel dinner lunch recipe garden kitchen weekend holiday birthday
""".split()
VERBS = """said made went took came saw knew got gave found thought told became left felt brought began kept
held wrote stood heard let meant set met ran paid sat spoke lay led read grew lost fell sent built
understood drew broke spent cut rose drove bought wore chose asked needed wanted used worked called tried
moved lived believed happened included continued changed played turned started showed opened added
reviewed planned shipped fixed deployed tested booked cancelled scheduled updated merged reported
discussed approved rejected visited cooked cleaned mentioned remembered forgot prefers likes enjoys needs
wants keeps owns manages tracks stores checks sends""".split()
ADJECTIVES = """good new first last long great little own other old right big high different small large next
early young important few public bad same able free sure clear full special easy strong certain
whole real best better true hard major recent local late private simple final main green red blue
quarterly weekly urgent quiet happy busy careful expensive cheap fresh slow fast broken stable secure
open closed remote shared personal internal external""".split()
ADVERBS = """quickly slowly carefully again often never always usually later soon today yesterday tomorrow
together almost finally recently already still early""".split()
DETERMINERS = "the the the a a a this that every each some our my their his her its".split()
PREPOSITIONS = "of in to for with on at from by about into over after before during under between".split()
PRONOUNS = "she he they we I it you".split()
OBJECT_PRONOUNS = "her him them us me it you".split()
CONJUNCTIONS = "and but because while although so and and".split()
NAMES = """alice bob carol dave erin frank grace heidi ivan judy mallory oscar peggy rupert sybil trent
victor walter""".split()

_ONSETS = ["", "b", "br", "c", "ch", "cl", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "l", "m", "n", "p",
           "pl", "pr", "qu", "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "rt", "x"]

NAMESPACES = [f"agents/agent-{i:02d}/notes" for i in range(20)] + [f"teams/team-{i}/docs" for i in range(5)]
TAGS = [f"topic-{i:02d}" for i in range(40)]


def _pseudo_words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                       for _ in range(rng.choice((2, 2, 3))))
        if len(word) >= 4 and word not in taken:
            taken.add(word)
            words.append(word)
    return words


class _Zipf:
    """Draws from a ranked list with weight 1/(rank+q)^s."""

    def __init__(self, items: list[str], s: float = ZIPF_S, q: float = ZIPF_Q):
        self.items = items
        self._cum = list(itertools.accumulate(1.0 / (r + q) ** s for r in range(len(items))))

    def draw(self, rng: random.Random) -> str:
        return self.items[bisect(self._cum, rng.random() * self._cum[-1])]


class Corpus:
    """Cubes and queries; the same seed gives the same text on every machine and Python version."""

    def __init__(self, seed: int = 7):
        self.seed = seed
        rng = random.Random(f"vocabulary-{seed}")
        taken = set(NOUNS + VERBS + ADJECTIVES + ADVERBS + DETERMINERS + PREPOSITIONS + PRONOUNS + NAMES)
        tail = _pseudo_words(rng, TAIL_WORDS, taken)
        # The tail splits 3:1:1 into nouns, verbs (given a past-tense ending) and adjectives.
        nouns = list(dict.fromkeys(NOUNS)) + tail[0::5] + tail[3::5] + tail[4::5]
        verbs = VERBS + [w + "ed" for w in tail[1::5]]
        adjectives = ADJECTIVES + tail[2::5]
        self.nouns, self.verbs, self.adjectives = _Zipf(nouns), _Zipf(verbs), _Zipf(adjectives)
        self.adverbs = _Zipf(ADVERBS, 0.8, 1)
        self.namespaces, self.tags = _Zipf(NAMESPACES, 1.0, 1), _Zipf(TAGS, 1.0, 1)
        self.vocabulary_size = len(nouns) + len(verbs) + len(adjectives) + len(ADVERBS)

    # -- text ----------------------------------------------------------------------------------

    def _noun_phrase(self, rng: random.Random, subject: bool) -> list[str]:
        r = rng.random()
        if r < 0.12:
            return [rng.choice(PRONOUNS if subject else OBJECT_PRONOUNS)]
        if r < 0.2:
            return [rng.choice(NAMES).capitalize()]
        words = [rng.choice(DETERMINERS)]
        if rng.random() < 0.45:
            words.append(self.adjectives.draw(rng))
        words.append(self.nouns.draw(rng))
        if words[0] in ("a", "an"):
            words[0] = "an" if words[1][0] in "aeiou" else "a"
        return words

    def _clause(self, rng: random.Random) -> list[str]:
        words = self._noun_phrase(rng, True) + [self.verbs.draw(rng)] + self._noun_phrase(rng, False)
        for _ in range(rng.choice((0, 1, 1, 2))):
            words += [rng.choice(PREPOSITIONS)] + self._noun_phrase(rng, False)
        if rng.random() < 0.2:
            words.append(self.adverbs.draw(rng))
        return words

    def sentence(self, rng: random.Random) -> str:
        words = self._clause(rng)
        if rng.random() < 0.35:
            words += [rng.choice(CONJUNCTIONS)] + self._clause(rng)
        if rng.random() < 0.1:
            words.insert(rng.randrange(1, len(words)), str(rng.randrange(2, 2030)))
        text = " ".join(words)
        return text[0].upper() + text[1:] + rng.choice(".....?!")

    def text(self, rng: random.Random, low: int = 200, high: int = 500) -> str:
        target = rng.randint(low, high)
        out = ""
        while len(out) < target:
            out = f"{out} {self.sentence(rng)}" if out else self.sentence(rng)
        if len(out) > high:
            cut = out.rfind(" ", 0, high)
            out = out[:cut].rstrip(",;") + "."
        return out

    def cubes(self, n: int, start: int = 0) -> Iterator[dict]:
        """Records {"text", "namespace", "tags"}: cube i is the same whatever n and start are."""
        for i in range(start, start + n):
            rng = random.Random(f"cube-{self.seed}-{i}")
            namespace = self.namespaces.draw(rng)
            tags = sorted({self.tags.draw(rng) for _ in range(rng.choice((0, 1, 1, 2, 3)))})
            yield {"text": self.text(rng), "namespace": namespace, "tags": tags}

    # -- queries -------------------------------------------------------------------------------

    def queries(self, n: int) -> list[str]:
        """1-6 word queries over the same vocabulary; longer ones read like questions, with function words."""
        rng = random.Random(f"queries-{self.seed}")
        out = []
        for _ in range(n):
            k = rng.randint(1, 6)
            words = []
            for _ in range(k):
                r = rng.random()
                pool = self.nouns if r < 0.6 else self.verbs if r < 0.8 else self.adjectives
                words.append(pool.draw(rng))
            if k >= 3 and rng.random() < 0.5:
                words.insert(0, rng.choice(("what", "when", "where", "who", "how")))
                words.insert(rng.randrange(2, len(words) + 1), rng.choice(PREPOSITIONS + DETERMINERS))
            out.append(" ".join(words))
        return out


if __name__ == "__main__":
    corpus = Corpus()
    for cube in corpus.cubes(3):
        print(cube)
    print(corpus.queries(10))
