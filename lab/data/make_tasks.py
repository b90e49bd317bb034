#!/usr/bin/python3
"""Build the hydraopt end-to-end task benchmark data from Debian word lists.

Writes, into OUT (default: <repo>/assets/tasks):

  <app>-<lang>/train.jsonl, <app>-<lang>/test.jsonl   40 tasks (8 languages x 5 app slots)
  <app>-<lang>/calib.jsonl                             calibration set: CALIB_N (64) evenly
                                                       spaced train examples, the lines at
                                                       indices floor(j * n / 64), j = 0..63
                                                       (n = train examples), in that order
                                                       (so never a test example; shipped
                                                       with test.jsonl)
  pretrain.txt                                         multilingual pretraining stream
  manifest.json                                        sources, rules, counts, sha256s

Standard library only, deterministic (no wall clock, no PYTHONHASHSEED dependence:
sets are only ever iterated after sorting).  See lab/data/README.md.

Usage:  /usr/bin/python3 lab/data/make_tasks.py [OUT]
"""

import argparse
import collections
import functools
import heapq
import hashlib
import json
import operator
import os
import re
import subprocess
import sys
import time
import unicodedata

SEED = "hydraopt-tasks-v1"
PRETRAIN_SEED = 0x5EED_1234_ABCD
TEST_N = 300
TRAIN_TARGET = 5000          # per task (at least TRAIN_MIN)
TRAIN_MIN = 2000
CALIB_N = 64                 # calib.jsonl = CALIB_N evenly spaced train examples
MIN_LEN, MAX_LEN = 4, 14     # word length in characters
MAX_FIELD_BYTES = 30         # prompt and answer each, UTF-8 bytes
SEQ_BUDGET = 64              # BOS/SEP/EOS + prompt + answer
PRETRAIN_BYTES = 6_000_000
PRETRAIN_LINE_MAX = 63       # bytes per pretraining line (fits one 64-byte context)
CAP_MIN_CAPITALISED = 1200   # below this many usable capitalised words, cap -> accent
DEFAULT_LEFTHYPHENMIN, DEFAULT_RIGHTHYPHENMIN = 2, 3

LANGS = ["de", "fr", "es", "it", "pt", "nl", "sv", "pl"]
SLOTS = ["spell", "hyph", "rev", "cap", "vowel"]

AZ = "abcdefghijklmnopqrstuvwxyz"
LANG_INFO = {
    "de": dict(name="German", wpkg="wngerman", wfile="/usr/share/dict/ngerman",
               hpkg="hyphen-de", hfile="/usr/share/hyphen/hyph_de_DE.dic",
               alphabet=AZ + "äöüß", vowels="aeiouäöü"),
    "fr": dict(name="French", wpkg="wfrench", wfile="/usr/share/dict/french",
               hpkg="hyphen-fr", hfile="/usr/share/hyphen/hyph_fr.dic",
               alphabet=AZ + "àâæçèéêëîïôœùûüÿ", vowels="aeiouyàâæèéêëîïôœùûüÿ"),
    "es": dict(name="Spanish", wpkg="wspanish", wfile="/usr/share/dict/spanish",
               hpkg="hyphen-es", hfile="/usr/share/hyphen/hyph_es_ES.dic",
               alphabet=AZ + "áéíñóúü", vowels="aeiouáéíóúü"),
    "it": dict(name="Italian", wpkg="witalian", wfile="/usr/share/dict/italian",
               hpkg="hyphen-it", hfile="/usr/share/hyphen/hyph_it_IT.dic",
               alphabet=AZ + "àèéìíòóùú", vowels="aeiouàèéìíòóùú"),
    "pt": dict(name="Portuguese", wpkg="wportuguese", wfile="/usr/share/dict/portuguese",
               hpkg="hyphen-pt-pt", hfile="/usr/share/hyphen/hyph_pt_PT.dic",
               alphabet=AZ + "àáâãçéêíóôõúü", vowels="aeiouàáâãéêíóôõúü"),
    "nl": dict(name="Dutch", wpkg="wdutch", wfile="/usr/share/dict/dutch",
               hpkg="hyphen-nl", hfile="/usr/share/hyphen/hyph_nl_NL.dic",
               alphabet=AZ + "áäèéêëíïóöúü", vowels="aeiouáäèéêëíïóöúü"),
    "sv": dict(name="Swedish", wpkg="wswedish", wfile="/usr/share/dict/swedish",
               hpkg="hyphen-sv", hfile="/usr/share/hyphen/hyph_sv_SE.dic",
               alphabet=AZ + "åäöé", vowels="aeiouyåäöé"),
    "pl": dict(name="Polish", wpkg="wpolish", wfile="/usr/share/dict/polish",
               hpkg="hyphen-pl", hfile="/usr/share/hyphen/hyph_pl_PL.dic",
               alphabet=AZ + "ąćęłńóśźż", vowels="aeiouyąęó"),
}


# ----------------------------------------------------------------------------- helpers

def hkey(*parts):
    """Deterministic 64-bit hash of the parts (BLAKE2b-64 keyed by SEED)."""
    h = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8,
                        key=SEED.encode("ascii"))
    return int.from_bytes(h.digest(), "big")


class HashOrder:
    """`words` sorted by hkey(tag, text) (text = keytexts[i] or words[i]),
    ties by position; materialised lazily in key bands so that only the
    prefix actually consumed is sorted.  Iteration order == full sort."""

    NBANDS_PER = 1 << 16

    def __init__(self, tag, words, keytexts=None):
        self.words = words
        f = functools.partial(hashlib.blake2b, digest_size=8, key=SEED.encode("ascii"))
        texts = map((tag + "\x1f").__add__, keytexts if keytexts is not None else words)
        self.keys = list(map(operator.methodcaller("digest"), map(f, map(str.encode, texts))))
        self.nbands = max(1, len(words) // self.NBANDS_PER)
        self.done = []          # materialised prefix
        self.band = 0

    def _bound(self, b):
        return ((b << 64) // self.nbands).to_bytes(8, "big") if b < self.nbands else None

    def _next_band(self):
        lo, hi = self._bound(self.band), self._bound(self.band + 1)
        keys = self.keys
        if hi is None:
            idx = [i for i, k in enumerate(keys) if k >= lo]
        else:
            idx = [i for i, k in enumerate(keys) if lo <= k < hi]
        idx.sort(key=keys.__getitem__)
        self.done.extend((keys[i], self.words[i]) for i in idx)
        self.band += 1

    def items(self):
        """(key, word) pairs in order."""
        i = 0
        while True:
            while i >= len(self.done):
                if self.band >= self.nbands:
                    return
                self._next_band()
            yield self.done[i]
            i += 1

    def __iter__(self):
        for _, w in self.items():
            yield w


class SplitMix64:
    """Tiny deterministic PRNG (independent of Python's random module)."""

    def __init__(self, seed):
        self.s = seed & 0xFFFFFFFFFFFFFFFF

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n


def nbytes(s):
    return len(s.encode("utf-8"))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_version(pkg):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def decode_wordlist(raw):
    """Debian word lists are UTF-8 or ISO-8859-1 (wswedish).  Strict UTF-8 first."""
    try:
        return raw.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "ISO-8859-1"


# ----------------------------------------------------------------------------- Liang

def hyph_charset_to_codec(cs):
    cs = cs.strip()
    if cs.upper() in ("UTF-8", "UTF8"):
        return "utf-8"
    m = re.fullmatch(r"(?i)ISO[-_]?8859[-_](\d+)", cs)
    if m:
        return "iso8859_" + m.group(1)
    m = re.fullmatch(r"(?i)(?:microsoft-)?cp(\d+)", cs)
    if m:
        return "cp" + m.group(1)
    raise ValueError("unknown hyphenation charset %r" % cs)


class HyphLevel:
    def __init__(self):
        self.patterns = {}      # letters -> tuple of len(letters)+1 digits
        self.maxlen = 0
        self.params = {}        # LEFTHYPHENMIN etc. as found in this level
        self.nonstandard = 0    # patterns with '/' (not used; counted)
        self._prefixes = None

    def prefixes(self):
        if self._prefixes is None:
            pre = set()
            for p in self.patterns:
                for k in range(1, len(p) + 1):
                    pre.add(p[:k])
            self._prefixes = pre
        return self._prefixes


HYPH_MODES = ("libhyphen", "liang")


class Hyphenator:
    """Liang's algorithm over a libhyphen/LibreOffice .dic pattern file.

    File format and control flow follow libhyphen 2.8 (hnj_hyphen_hyphenate2),
    for words without digits, hyphens or apostrophes:
      * first line: charset; '%' and '#' lines are comments;
      * keyword lines LEFTHYPHENMIN, RIGHTHYPHENMIN, COMPOUNDLEFTHYPHENMIN,
        COMPOUNDRIGHTHYPHENMIN, NOHYPHEN;
      * NEXTLEVEL splits a two-level file (hyph_de_DE.dic): the first level
        finds compound boundaries, the second level hyphenates each compound
        part, with COMPOUND*HYPHENMIN applied at inner part boundaries;
      * duplicated patterns: the last one wins;
      * finally LEFTHYPHENMIN/RIGHTHYPHENMIN (from the file's first level,
        else this benchmark's defaults 2/3) are applied to the whole word.

    Pattern matching (Liang), per level, in '.word.':
      * "all" (Liang): every pattern occurring anywhere contributes, the
        maximum digit wins, odd = hyphen;
      * "longest" (libhyphen's automaton): at each end position only the
        longest string that is a prefix of some pattern is considered, and
        it contributes only if it is itself a pattern.  This is how libhyphen
        behaves on files that were not closed under substrings; the German
        compound level (a 69k-entry word list) relies on it: digit-less
        entries such as "erstrebenswert" act as exceptions that block
        shorter entries such as "reben1".
    mode="libhyphen" (default, used for the benchmark): "longest" everywhere,
    i.e. byte-exact libhyphen 2.8.8 / LibreOffice output.  Verified against
    libhyphen.so.0 on 2.66M words (every lowercase word of seven lists and
    1M Polish words): 0 differences.  The Debian German file needs these semantics
    (textbook Liang gives e.g. "zu-a-r-bei-ten-dem").
    mode="liang": "all" for hyphenation-pattern levels, "longest" for the
    first (compound word list) level of a two-level file.  Differs from
    libhyphen on 2.1% (de), 5.9% (it), 0.02% (pt) of words, 0 elsewhere.
    Non-standard patterns ('/', e.g. ck -> k-k) are not supported (none of
    the eight files used has any).
    """

    def __init__(self, path, mode="libhyphen"):
        assert mode in HYPH_MODES
        self.mode = mode
        with open(path, "rb") as f:
            raw = f.read()
        first, _, rest = raw.partition(b"\n")
        self.charset = first.decode("ascii").strip()
        self.codec = hyph_charset_to_codec(self.charset)
        text = rest.decode(self.codec)
        levels = [HyphLevel()]
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if line.startswith("NEXTLEVEL"):
                levels.append(HyphLevel())
                continue
            if not line.strip() or line[0] in "%#":
                continue
            lv = levels[-1]
            kw = line.split()
            if kw[0] in ("LEFTHYPHENMIN", "RIGHTHYPHENMIN", "COMPOUNDLEFTHYPHENMIN",
                         "COMPOUNDRIGHTHYPHENMIN"):
                lv.params[kw[0]] = int(kw[1])
                continue
            if kw[0] == "NOHYPHEN":
                lv.params["NOHYPHEN"] = line[len("NOHYPHEN"):].strip()
                continue
            tok = kw[0]
            if "/" in line:
                lv.nonstandard += 1
                continue
            letters, digits = [], [0]
            for ch in tok:
                if "0" <= ch <= "9":
                    digits[-1] = int(ch)
                else:
                    letters.append(ch)
                    digits.append(0)
            word = "".join(letters)
            lv.patterns[word] = tuple(digits)
            lv.maxlen = max(lv.maxlen, len(word))
        if len(levels) > 2:
            raise ValueError("%s: more than one NEXTLEVEL" % path)
        if len(levels) == 1:
            # libhyphen's implicit first level: only breaks at hyphens/apostrophes.
            default = HyphLevel()
            for p in ("-", "'", "\u2013", "\u2019"):
                default.patterns[p] = (1, 1)
            default.maxlen = 1
            self.levels = [default, levels[0]]
            self.two_level_file = False
        else:
            self.levels = levels
            self.two_level_file = True
        if mode == "libhyphen":
            self.matching = ["longest"] * len(self.levels)
        else:
            self.matching = ["longest" if (self.two_level_file and i == 0) else "all"
                             for i in range(len(self.levels))]
        top_params = self.levels[0].params if self.two_level_file else levels[0].params
        self.params = dict(top_params)
        self.lhmin = top_params.get("LEFTHYPHENMIN", 0) or DEFAULT_LEFTHYPHENMIN
        self.rhmin = top_params.get("RIGHTHYPHENMIN", 0) or DEFAULT_RIGHTHYPHENMIN
        if self.two_level_file:
            self.clhmin = top_params.get("COMPOUNDLEFTHYPHENMIN", 0)
            self.crhmin = top_params.get("COMPOUNDRIGHTHYPHENMIN", 0)
        else:
            self.clhmin = top_params.get("COMPOUNDLEFTHYPHENMIN") or \
                top_params.get("LEFTHYPHENMIN") or 3
            self.crhmin = top_params.get("COMPOUNDRIGHTHYPHENMIN") or \
                top_params.get("RIGHTHYPHENMIN") or 3
        self.n_patterns = [len(lv.patterns) for lv in self.levels]
        self.nonstandard = sum(lv.nonstandard for lv in self.levels)

    def _match(self, li, word):
        """Pattern values: h[k] = value of the gap after word[k] (last gap 0)."""
        level = self.levels[li]
        w = "." + word + "."
        L = len(w)
        vals = [0] * (L + 1)
        pats = level.patterns
        ml = level.maxlen
        if self.matching[li] == "all":
            for s in range(L):
                for e in range(s + 1, min(L, s + ml) + 1):
                    d = pats.get(w[s:e])
                    if d is not None:
                        for k, v in enumerate(d):
                            if v > vals[s + k]:
                                vals[s + k] = v
        else:
            pre = level.prefixes()
            for e in range(1, L + 1):
                for s in range(max(0, e - ml), e):
                    sub = w[s:e]
                    if sub in pre:
                        d = pats.get(sub)
                        if d is not None:
                            for k, v in enumerate(d):
                                if v > vals[s + k]:
                                    vals[s + k] = v
                        break
        n = len(word)
        h = [vals[k + 2] for k in range(n)]
        if n:
            h[n - 1] = 0
        return h

    def _hyph(self, li, word, lend, rend):
        """Port of libhyphen's recursive hnj_hyphen_hyph_ (compound levels)."""
        h = self._match(li, word)
        if li + 1 >= len(self.levels):
            return h
        n = len(word)
        begin = 0
        for i in range(n):
            if (h[i] & 1) or (begin > 0 and i + 1 == n):
                if i - begin > 0:
                    seg = word[begin:i + 1]
                    h2 = self._hyph(li, seg, lend if begin == 0 else 0,
                                    0 if (h[i] & 1) else rend)
                    for j in range(i - begin):
                        h[begin + j] = h2[j]
                begin = i + 1
        if begin == 0:
            h = self._hyph(li + 1, word, lend, rend)
            if not lend:
                for j in range(min(n, self.clhmin - 1)):
                    h[j] = 0
            if not rend:
                for j in range(max(0, n - self.crhmin), n):
                    h[j] = 0
        return h

    def points(self, word):
        """Sorted gap indices k (hyphen after word[k])."""
        n = len(word)
        h = self._hyph(0, word, 1, 1)
        for j in range(min(n, self.lhmin - 1)):
            h[j] = 0
        for j in range(max(0, n - self.rhmin), n):
            h[j] = 0
        return [k for k in range(n) if h[k] & 1]

    def hyphenate(self, word, sep="-"):
        pts = set(self.points(word))
        return "".join(c + (sep if k in pts else "") for k, c in enumerate(word))


# ----------------------------------------------------------------------------- languages

class Lang:
    def __init__(self, code):
        info = LANG_INFO[code]
        self.code = code
        self.info = info
        self.alphabet = info["alphabet"]
        self.vowels = info["vowels"]
        with open(info["wfile"], "rb") as f:
            raw = f.read()
        text, self.encoding = decode_wordlist(raw)
        text = unicodedata.normalize("NFC", text)
        self.raw_lines = text.count("\n") + (0 if text.endswith("\n") else 1)
        letters = self.alphabet + self.alphabet.upper().replace("SS", "")
        cls = "[" + re.escape(letters) + "]+"
        # every entry: letters of the language only (no digits, punctuation, spaces).
        # Deduplicated, sorted by code point (the lists are nearly sorted: cheap).
        found = re.findall(r"^" + cls + r"$", text, re.M)
        self.entries = sorted(dict.fromkeys(found))
        lowered = "\n".join(self.entries).lower().split("\n")
        assert len(lowered) == len(self.entries)
        self.lower_count = collections.Counter(lowered)
        self.lower_set = self.lower_count.keys()            # every entry, lowercased
        pool, caps = [], []
        for w in self.entries:
            if MIN_LEN <= len(w) <= MAX_LEN:
                (pool if w.islower() else caps).append(w)
        self.pool = pool                                    # lowercase, 4-14 letters
        self.order = HashOrder(code, pool)
        # cap candidates: entries (4-14 letters) whose lowercase form has exactly one
        # spelling in the list; ordered by hkey(code, lowercase form), i.e. the
        # lowercase ones in self.order, merged with the capitalised ones.
        lc = self.lower_count
        caps = [(w, w.lower()) for w in caps]
        caps = [(w, l) for w, l in caps if lc[l] == 1]
        self.cap_capitalised = len(caps)
        self.cap_upper_order = HashOrder(code, [w for w, _ in caps], [l for _, l in caps])
        # letter distribution for typos (frequency over ~200k evenly spaced pool words)
        cnt = collections.Counter("".join(self.pool[::max(1, len(self.pool) // 200000)]))
        self.letters = sorted(cnt)
        self.letter_cum = []
        tot = 0
        for c in self.letters:
            tot += cnt[c]
            self.letter_cum.append(tot)
        self.letter_total = tot
        self._mask_table = {ord(v): "_" for v in self.vowels}
        tbl = {}
        for c in self.alphabet:
            base = "".join(x for x in unicodedata.normalize("NFD", c)
                           if not unicodedata.combining(x))
            if base != c:
                tbl[ord(c)] = base
        self._strip_table = tbl
        self.hyph = Hyphenator(info["hfile"])
        self._mask_count = None
        self._strip_count = None

    # -- typo letters
    def letter_at(self, r):
        x = r % self.letter_total
        lo, hi = 0, len(self.letter_cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.letter_cum[mid] > x:
                hi = mid
            else:
                lo = mid + 1
        return self.letters[lo]

    # -- vowel masks
    def mask(self, w):
        return w.translate(self._mask_table)

    def mask_count(self):
        if self._mask_count is None:
            self._mask_count = collections.Counter(
                "\n".join(self.lower_set).translate(self._mask_table).split("\n"))
        return self._mask_count

    # -- accent stripping
    def strip(self, w):
        return w.translate(self._strip_table)

    def strip_count(self):
        if self._strip_count is None:
            self._strip_count = collections.Counter(
                "\n".join(self.lower_set).translate(self._strip_table).split("\n"))
        return self._strip_count


# ----------------------------------------------------------------------------- apps
#
# Each app maps a candidate word to (prompt, answer, word_key, cls) or None.
# word_key is the lowercase dictionary word the example is "about" (used for the
# train/test split and the pretraining exclusion); cls is a stratum for
# balanced apps (cap, accent), else None.

def fits(prompt, answer):
    pb, ab = nbytes(prompt), nbytes(answer)
    return pb <= MAX_FIELD_BYTES and ab <= MAX_FIELD_BYTES and pb + ab + 3 <= SEQ_BUDGET


def one_edit_neighbours_in(lang, t, target):
    """True iff the only dictionary word (any case, lowercased) one edit
    (substitution, deletion, adjacent transposition, insertion) from t is target."""
    has = lang.lower_set.__contains__
    letters = lang.alphabet
    splits = [(t[:i], t[i:]) for i in range(len(t) + 1)]
    hits = set(filter(has, [a + b[1:] for a, b in splits if b]))
    hits.update(filter(has, [a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1]))
    if hits - {target}:
        return False
    hits.update(filter(has, [a + c + b[1:] for a, b in splits if b for c in letters]))
    hits.update(filter(has, [a + c + b for a, b in splits for c in letters]))
    return hits == {target}


TYPO_OPS = ("sub", "del", "trans", "ins")


def app_spell(lang, w):
    n = len(w)
    for attempt in range(8):
        r = hkey("spell", lang.code, w, str(attempt))
        op = TYPO_OPS[r % 4]
        r >>= 2
        if op == "sub":
            p = r % n
            r //= n
            c = lang.letter_at(r)
            if c == w[p]:
                continue
            t = w[:p] + c + w[p + 1:]
        elif op == "del":
            t = w[:(r % n)] + w[(r % n) + 1:]
        elif op == "trans":
            p = r % (n - 1)
            if w[p] == w[p + 1]:
                continue
            t = w[:p] + w[p + 1] + w[p] + w[p + 2:]
        else:
            p = r % (n + 1)
            r //= (n + 1)
            t = w[:p] + lang.letter_at(r) + w[p:]
        if t in lang.lower_set or not fits(t, w):
            continue
        if one_edit_neighbours_in(lang, t, w):
            return (t, w, w, None)
    return None


def app_hyph(lang, w):
    a = lang.hyph.hyphenate(w)
    return (w, a, w, None) if fits(w, a) else None


def app_rev(lang, w):
    a = w[::-1]                      # code points; text is NFC, no combining marks
    return (w, a, w, None) if fits(w, a) else None


def app_vowel(lang, w):
    m = lang.mask(w)
    if "_" not in m or lang.mask_count()[m] != 1:
        return None
    return (m, w, w, None) if fits(m, w) else None


def app_cap(lang, w):
    # w is a cap candidate (entry as spelled in the list, lowercase form unique)
    p = w.lower()
    if not fits(p, w):
        return None
    return (p, w, p, "capitalised" if w != p else "lowercase")


def app_accent(lang, w):
    s = lang.strip(w)
    if lang.strip_count()[s] != 1:
        return None
    if not fits(s, w):
        return None
    return (s, w, w, "marked" if s != w else "plain")


APP_DOC = {
    "spell": "prompt: the word with one deterministic typo (substitution / deletion / adjacent "
             "transposition / insertion; inserted and substituted letters drawn from the "
             "language's letter frequencies); answer: the word. Kept only if the typo is not a "
             "word of the list and the word is the ONLY list word (any case) one edit away.",
    "hyph": "prompt: the word; answer: the word with '-' at every point found by Liang's "
            "algorithm with the language's hyphen pattern file, reproducing libhyphen 2.8.8 "
            "exactly (longest-prefix automaton matching, NEXTLEVEL compound patterns); "
            "LEFTHYPHENMIN/RIGHTHYPHENMIN from the file, else 2/3.",
    "rev": "prompt: the word; answer: its characters (Unicode code points, NFC) reversed.",
    "cap": "prompt: a lowercase word; answer: the word exactly as the list spells it. Only words "
           "whose lowercase form has exactly one spelling in the list; balanced: half the "
           "examples are spelled with capitals in the list (German nouns, proper nouns, "
           "acronyms), half are lowercase in the list (answer = prompt).",
    "accent": "prompt: the word with all diacritics removed (NFD, combining marks dropped; "
              "e.g. é->e, ñ->n, ç->c; ligatures æ/œ kept); answer: the word as spelled. Only "
              "words whose stripped form is unique in the list; balanced: half carry "
              "diacritics, half do not (answer = prompt).",
    "vowel": "prompt: the word with every vowel of the language (incl. accented vowels) "
             "replaced by '_'; answer: the word. Only words whose mask is unique in the list "
             "(all entries, lowercased).",
}


# ----------------------------------------------------------------------------- main build

def choose_slot_app(lang, slot):
    if slot != "cap":
        return slot
    return "cap" if lang.cap_capitalised >= CAP_MIN_CAPITALISED else "accent"


class CapOrder:
    """Cap candidates in hkey(code, lowercase form) order: lowercase pool words
    with a unique lowercase form merged with the capitalised candidates."""

    def __init__(self, lang):
        self.lang = lang

    def __iter__(self):
        lc = self.lang.lower_count
        low = ((k, w) for k, w in self.lang.order.items() if lc[w] == 1)
        for _, w in heapq.merge(low, self.lang.cap_upper_order.items()):
            yield w


def task_candidates(lang, app):
    return CapOrder(lang) if app == "cap" else lang.order


APP_FN = {"spell": app_spell, "hyph": app_hyph, "rev": app_rev, "vowel": app_vowel,
          "cap": app_cap, "accent": app_accent}
BALANCED = {"cap": ("capitalised", "lowercase"), "accent": ("marked", "plain")}


class Task:
    def __init__(self, lang, slot, app):
        self.lang, self.slot, self.app = lang, slot, app
        self.name = "%s-%s" % (app, lang.code)
        self.cands = task_candidates(lang, app)
        self.cache = {}
        self.test, self.train = [], []

    def example(self, w):
        if w not in self.cache:
            self.cache[w] = APP_FN[self.app](self.lang, w)
        return self.cache[w]

    def excluded(self, ex, exclude):
        """An example is excluded if its word, prompt or answer (lowercased,
        hyph answers without '-') is an excluded string: a typo or an
        accent-stripped prompt can be another language's test word."""
        p, a, w, _ = ex
        a = a.replace("-", "") if self.app == "hyph" else a
        return w in exclude or p.lower() in exclude or a.lower() in exclude

    def select(self, per_class, exclude, stop_at):
        """Walk the hash order; take examples that are not excluded.
        Balanced apps take up to per_class of each class."""
        out = []
        if self.app in BALANCED:
            classes = BALANCED[self.app]
            buckets = {c: [] for c in classes}
            for w in self.cands:
                ex = self.example(w)
                if ex is None or self.excluded(ex, exclude):
                    continue
                b = buckets[ex[3]]
                if len(b) < per_class:
                    b.append(ex)
                if all(len(buckets[c]) >= per_class for c in classes):
                    break
            m = min(len(buckets[c]) for c in classes)
            keep = set()
            for c in classes:
                for ex in buckets[c][:m]:
                    keep.add(ex[2])
            # keep hash order (interleaved classes)
            for w in self.cands:
                ex = self.cache.get(w)
                if ex is not None and ex[2] in keep:
                    out.append(ex)
                    keep.discard(ex[2])
                    if not keep:
                        break
        else:
            for w in self.cands:
                ex = self.example(w)
                if ex is None or self.excluded(ex, exclude):
                    continue
                out.append(ex)
                if len(out) >= stop_at:
                    break
        return out


def calib_sample(train):
    """The calibration set: train[floor(j * n / CALIB_N)] for j = 0..CALIB_N-1
    (n = len(train) >= CALIB_N, so the indices are distinct), in that order.
    Evenly spaced rather than the first CALIB_N lines, because train.jsonl is
    ordered by class in some tasks."""
    n = len(train)
    return [train[j * n // CALIB_N] for j in range(CALIB_N)]


def write_jsonl(path, exs):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for p, a, _, _ in exs:
            f.write(json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) + "\n")


def build_pretrain(langs, exclude, path):
    """Sample lines from each language's code-point-sorted list, skipping every
    excluded (test) string and words outside 2-16 letters on the fly."""
    rng = SplitMix64(PRETRAIN_SEED)
    total = 0
    kinds = collections.Counter()
    per_lang = collections.Counter()

    def ok(w):
        return 2 <= len(w) <= 16 and w.lower() not in exclude

    def one_word(L):
        while True:
            w = L[rng.below(len(L))]
            if ok(w):
                return w

    with open(path, "w", encoding="utf-8", newline="\n") as f:
        while total < PRETRAIN_BYTES:
            code = LANGS[rng.below(len(LANGS))]
            L = langs[code].entries
            r = rng.below(100)
            if r < 50:
                k = 4 + rng.below(9)                         # 4..12 words
                i = rng.below(len(L))
                words, size = [], -1
                while len(words) < k and i < len(L):
                    w = L[i]
                    i += 1
                    if not ok(w):
                        continue
                    if size + 1 + nbytes(w) > PRETRAIN_LINE_MAX:
                        break
                    words.append(w)
                    size += 1 + nbytes(w)
                if len(words) < 2:
                    continue
                line, kind = " ".join(words), "run"
            elif r < 75:
                line, kind = one_word(L), "word"
            else:
                line, kind = "%s: %s" % (code, one_word(L)), "tagged"
            f.write(line + "\n")
            total += nbytes(line) + 1
            kinds[kind] += 1
            per_lang[code] += 1
    return {"bytes": total, "lines": dict(sorted(kinds.items())),
            "lines_per_language": dict(sorted(per_lang.items()))}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=os.path.join(repo, "assets", "tasks"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    out = args.out
    t0 = time.time()

    def log(*a):
        print("[%6.1fs]" % (time.time() - t0), *a, flush=True)

    for code in LANGS:
        for k in ("wfile", "hfile"):
            if not os.path.exists(LANG_INFO[code][k]):
                sys.exit("missing %s (install package %s)" % (
                    LANG_INFO[code][k], LANG_INFO[code]["wpkg" if k == "wfile" else "hpkg"]))

    langs = {}
    for code in LANGS:
        lg = Lang(code)
        langs[code] = lg
        log("%s: %d lines (%s) -> %d entries, %d lowercase 4-14, hyphen %s %s lh/rh=%d/%d "
            "patterns=%s" % (code, lg.raw_lines, lg.encoding, len(lg.entries), len(lg.pool),
                             os.path.basename(lg.info["hfile"]), lg.hyph.charset, lg.hyph.lhmin,
                             lg.hyph.rhmin, lg.hyph.n_patterns))
        assert lg.hyph.nonstandard == 0, "non-standard hyphenation patterns not supported"

    tasks = []
    for code in LANGS:
        for slot in SLOTS:
            tasks.append(Task(langs[code], slot, choose_slot_app(langs[code], slot)))

    # pass 1: test sets (first TEST_N eligible in hash order; balanced apps 50/50)
    for t in tasks:
        t.test = t.select(TEST_N // 2, exclude=frozenset(), stop_at=TEST_N)
        assert len(t.test) == TEST_N, (t.name, len(t.test))
        log("%-10s test %d" % (t.name, len(t.test)))

    # every test word of every task (lowercase), across languages
    # (word, answer and prompt of every test example, lowercased, hyphens removed)
    test_words = set()
    for t in tasks:
        for p, a, w, _ in t.test:
            test_words.add(w.lower())
            test_words.add(a.replace("-", "").lower() if t.app == "hyph" else a.lower())
            test_words.add(p.lower())
    exclude = frozenset(test_words)

    # pass 2: train sets (same order, skipping every test word of every task)
    for t in tasks:
        t.train = t.select(TRAIN_TARGET // 2, exclude=exclude, stop_at=TRAIN_TARGET)
        assert len(t.train) >= TRAIN_MIN, (t.name, len(t.train))
        log("%-10s train %5d test %d" % (t.name, len(t.train), len(t.test)))

    # checks
    for t in tasks:
        tw = {ex[2] for ex in t.test}
        for ex in t.train:
            assert ex[2] not in tw and ex[2].lower() not in exclude, (t.name, ex)
            assert ex[0].lower() not in tw and ex[1].replace("-", "").lower() not in tw
        for split in (t.train, t.test):
            keys = [ex[2] for ex in split]
            assert len(keys) == len(set(keys)), (t.name, "duplicate word")
            prompts = [ex[0] for ex in split]
            assert len(prompts) == len(set(prompts)), (t.name, "duplicate prompt")
            for p, a, _, _ in split:
                assert fits(p, a) and p and a, (t.name, p, a)
        assert len(t.train) >= CALIB_N, (t.name, "train smaller than calib")
        if t.app in BALANCED:
            c = collections.Counter(ex[3] for ex in t.test)
            assert len(set(c.values())) == 1, (t.name, c)

    # write
    os.makedirs(out, exist_ok=True)
    files = {}
    for t in tasks:
        d = os.path.join(out, t.name)
        os.makedirs(d, exist_ok=True)
        for split, exs in (("train", t.train), ("test", t.test),
                           ("calib", calib_sample(t.train))):
            p = os.path.join(d, split + ".jsonl")
            write_jsonl(p, exs)
            files["%s/%s.jsonl" % (t.name, split)] = p
    log("task files written")
    pre_stats = build_pretrain(langs, exclude, os.path.join(out, "pretrain.txt"))
    files["pretrain.txt"] = os.path.join(out, "pretrain.txt")
    log("pretrain.txt: %d bytes" % pre_stats["bytes"])

    # pretraining must not contain any test word (token-level check)
    with open(files["pretrain.txt"], encoding="utf-8") as f:
        for line in f:
            for tok in line.split():
                if tok.endswith(":") and tok[:-1] in LANGS:
                    continue
                assert tok.lower() not in exclude, ("test word in pretrain.txt", tok)

    # manifest
    sources = {}
    for code in LANGS:
        lg = langs[code]
        info = lg.info
        sources[code] = {
            "language": info["name"],
            "wordlist": {"package": info["wpkg"], "version": package_version(info["wpkg"]),
                         "path": info["wfile"], "encoding": lg.encoding,
                         "sha256": sha256_file(info["wfile"]), "lines": lg.raw_lines,
                         "entries_used": len(lg.entries)},
            "hyphenation": {"package": info["hpkg"], "version": package_version(info["hpkg"]),
                            "path": info["hfile"], "realpath": os.path.realpath(info["hfile"]),
                            "charset": lg.hyph.charset, "sha256": sha256_file(info["hfile"]),
                            "two_level": lg.hyph.two_level_file,
                            "matching": lg.hyph.mode,
                            "patterns_per_level": lg.hyph.n_patterns,
                            "lefthyphenmin": lg.hyph.lhmin, "righthyphenmin": lg.hyph.rhmin,
                            "file_params": lg.hyph.params},
            "alphabet": lg.alphabet, "vowels": lg.vowels,
        }
    task_list = []
    for t in tasks:
        entry = {"name": t.name, "lang": t.lang.code, "slot": t.slot, "app": t.app,
                 "train": len(t.train), "test": len(t.test),
                 "calib": len(calib_sample(t.train)),
                 "max_prompt_bytes": max(nbytes(ex[0]) for ex in t.train + t.test),
                 "max_answer_bytes": max(nbytes(ex[1]) for ex in t.train + t.test),
                 "sources": [sources[t.lang.code]["wordlist"]["path"]] +
                            ([sources[t.lang.code]["hyphenation"]["path"]] if t.app == "hyph" else [])}
        if t.app in BALANCED:
            entry["classes_train"] = dict(sorted(collections.Counter(ex[3] for ex in t.train).items()))
            entry["classes_test"] = dict(sorted(collections.Counter(ex[3] for ex in t.test).items()))
        task_list.append(entry)
    manifest = {
        "description": "hydraopt end-to-end task benchmark: 8 languages x 5 applications, "
                       "byte-level prompt -> answer, exact-match scoring",
        "generator": "lab/data/make_tasks.py",
        "command": "/usr/bin/python3 lab/data/make_tasks.py",
        "languages": LANGS,
        "slots": SLOTS,
        "apps_per_language": {c: {t.slot: t.app for t in tasks if t.lang.code == c} for c in LANGS},
        "apps": {a: APP_DOC[a] for a in sorted({t.app for t in tasks})},
        "format": {"line": {"prompt": "str", "answer": "str"},
                   "max_field_bytes": MAX_FIELD_BYTES, "sequence_budget_bytes": SEQ_BUDGET,
                   "word_length_chars": [MIN_LEN, MAX_LEN]},
        "split_rule": (
            "Per language, candidate words are ordered by a keyed BLAKE2b-64 hash of "
            "(lang, word) (seed %r). For every task, test = the first %d eligible words in that "
            "order (cap/accent: first %d of each class). Then every test word of every task in "
            "every language (lowercased) is removed from all training data: train = the first "
            "%d eligible remaining words (cap/accent: up to %d per class, classes balanced). "
            "Excluded strings = word, answer and prompt of every test example, lowercased "
            "(hyph answers without '-'). pretrain.txt excludes the same strings. Non-cap tasks use list entries that are "
            "entirely lowercase, %d-%d letters of the language's alphabet (no digits, "
            "punctuation, spaces)." % (SEED, TEST_N, TEST_N // 2, TRAIN_TARGET,
                                       TRAIN_TARGET // 2, MIN_LEN, MAX_LEN)),
        "calib_rule": (
            "<task>/calib.jsonl = %d evenly spaced lines of <task>/train.jsonl: the lines "
            "at 0-based indices floor(j * n / %d) for j = 0..%d, in that order, where n is "
            "the number of train examples (a calibration set drawn from the training "
            "split, so it shares no example, word, prompt or answer with any test set)."
            % (CALIB_N, CALIB_N, CALIB_N - 1)),
        "seeds": {"hash_key": SEED, "pretrain_splitmix64": PRETRAIN_SEED},
        "excluded_test_strings": len(exclude),
        "sources": sources,
        "tasks": task_list,
        "pretrain": dict(pre_stats, description=(
            "lines: 50%% runs of 4-12 consecutive words of a language's code-point-sorted list "
            "(cut to fit %d bytes), 25%% single words, 25%% '<lang>: word'; only list entries "
            "of 2-16 letters; language, line kind and positions drawn by SplitMix64; every "
            "excluded test string skipped" % PRETRAIN_LINE_MAX)),
        "files": {k: {"bytes": os.path.getsize(v), "sha256": sha256_file(v)}
                  for k, v in sorted(files.items())},
    }
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # report
    if not args.quiet:
        for t in tasks:
            print("== %s  train=%d test=%d  max bytes prompt/answer=%d/%d" % (
                t.name, len(t.train), len(t.test),
                max(nbytes(ex[0]) for ex in t.train + t.test),
                max(nbytes(ex[1]) for ex in t.train + t.test)))
            for p, a, _, _ in t.test[:5]:
                print("   %-18s -> %s" % (p, a))
    total = sum(os.path.getsize(v) for v in files.values()) + \
        os.path.getsize(os.path.join(out, "manifest.json"))
    log("done: %d tasks, %d test words excluded, %.1f MB in %s" % (
        len(tasks), len(exclude), total / 1e6, out))


if __name__ == "__main__":
    main()
