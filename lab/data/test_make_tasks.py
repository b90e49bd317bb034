#!/usr/bin/python3
"""Tests for lab/data/make_tasks.py (the end-to-end benchmark data generator).

Run from the repository root (standard library only, about 1.5 minutes, most of
it regenerating the data once):

    /usr/bin/python3 -m unittest discover -s lab/data -p 'test_make_tasks.py' -v

What is tested (expectations are worked out by hand or taken from the
documentation in lab/data/README.md, never copied from the script's output):

  * WordListReaderTest: decode_wordlist() and the word-list reading/filtering in
    Lang (UTF-8 and ISO-8859-1 lists, NFC, letters of the language only, dedupe,
    code-point sort, lowercase 4-14 letters for non-cap tasks, cap candidates) and
    the hash order, on tiny lists written to a temporary directory.
  * HyphenatorTest: the Liang/libhyphen pattern reader on tiny hand-written
    pattern files (charset line, comments, LEFT/RIGHTHYPHENMIN, duplicates,
    longest-match semantics, NEXTLEVEL compound files).
  * RealPatternFilesTest: the eight Debian pattern files (charset, hyphenmins as
    documented, documented words).
  * SplitOnRealDataTest: regenerates the whole data set with make_tasks.py into
    a temporary directory (once, in setUpClass) and checks it against the
    shipped assets/tasks/*/test.jsonl and */calib.jsonl, for train/test
    leakage, and that each calib.jsonl is the 64 evenly spaced lines of its
    train.jsonl (indices floor(j * n / 64), j = 0..63, n = train examples) with
    no prompt equal to a test prompt of any task.

The last two classes need the Debian packages listed in REQUIRED_PACKAGES; if
they are missing the tests FAIL (they do not skip).
"""

import collections
import functools
import hashlib
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MAKE_TASKS = os.path.join(HERE, "make_tasks.py")
SHIPPED = os.path.join(REPO, "assets", "tasks")
CALIB_N = 64            # calib.jsonl = train lines floor(j * n / 64), j = 0..63 (README)
sys.path.insert(0, HERE)

import make_tasks as mt  # noqa: E402

REQUIRED_PACKAGES = [
    "wngerman", "wfrench", "wspanish", "witalian", "wportuguese", "wdutch", "wswedish",
    "wpolish", "hyphen-de", "hyphen-fr", "hyphen-es", "hyphen-it", "hyphen-pt-pt",
    "hyphen-nl", "hyphen-sv", "hyphen-pl"]

LANGS = ["de", "fr", "es", "it", "pt", "nl", "sv", "pl"]
# The 40 task directories, from the task table in lab/data/README.md.
CAP_SLOT_APP = {"de": "cap", "fr": "accent", "es": "accent", "it": "accent",
                "pt": "cap", "nl": "cap", "sv": "cap", "pl": "cap"}
TASKS = sorted("%s-%s" % (app, lang) for lang in LANGS
               for app in ("spell", "hyph", "rev", CAP_SLOT_APP[lang], "vowel"))

# Letters of each language (a-z plus these; the benchmark's alphabets, also
# recorded in manifest.json) and the vowel sets listed in lab/data/README.md.
AZ = "abcdefghijklmnopqrstuvwxyz"
ALPHABET = {"de": AZ + "äöüß", "fr": AZ + "àâæçèéêëîïôœùûüÿ", "es": AZ + "áéíñóúü",
            "it": AZ + "àèéìíòóùú", "pt": AZ + "àáâãçéêíóôõúü", "nl": AZ + "áäèéêëíïóöúü",
            "sv": AZ + "åäöé", "pl": AZ + "ąćęłńóśźż"}
VOWELS = {"de": "aeiouäöü", "fr": "aeiouyàâæèéêëîïôœùûüÿ", "es": "aeiouáéíóúü",
          "it": "aeiouàèéìíòóùú", "pt": "aeiouàáâãéêíóôõúü", "nl": "aeiouáäèéêëíïóöúü",
          "sv": "aeiouyåäöé", "pl": "aeiouyąęó"}


def doc_hkey(*parts):
    """The documented order key: BLAKE2b-64(key="hydraopt-tasks-v1", parts joined
    by \\x1f), as a big-endian integer (written here from the README, not taken
    from make_tasks)."""
    d = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8,
                        key=b"hydraopt-tasks-v1").digest()
    return int.from_bytes(d, "big")


def missing_inputs():
    """Human-readable list of missing Debian packages / input files."""
    problems = []
    for code in mt.LANGS:
        info = mt.LANG_INFO[code]
        for key, pkg in (("wfile", info["wpkg"]), ("hfile", info["hpkg"])):
            if not os.path.exists(info[key]):
                problems.append("%s (package %s)" % (info[key], pkg))
    if shutil.which("dpkg-query"):
        for pkg in REQUIRED_PACKAGES:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                               capture_output=True, text=True)
            if r.returncode != 0 or "install ok installed" not in r.stdout:
                problems.append("package %s not installed" % pkg)
    if not problems:
        return None
    return ("inputs needed to regenerate the task data are missing: %s. Install them with: "
            "apt-get install %s" % ("; ".join(problems), " ".join(REQUIRED_PACKAGES)))


def write_hyph(path, charset, lines, codec=None):
    """A pattern file: charset line, then `lines` encoded in `codec`."""
    codec = codec or {"UTF-8": "utf-8", "ISO8859-1": "latin-1",
                      "ISO8859-2": "iso8859_2"}[charset]
    with open(path, "wb") as f:
        f.write(charset.encode("ascii") + b"\n")
        f.write(("\n".join(lines) + "\n").encode(codec))
    return path


# ============================================================================ word lists

class WordListReaderTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="test_make_tasks.")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.hfile = write_hyph(os.path.join(self.tmp, "hyph.dic"), "UTF-8", ["1na"])

    def lang(self, code, raw):
        """make_tasks.Lang(code) on a word list with the bytes `raw`."""
        path = os.path.join(self.tmp, "words-%s" % code)
        with open(path, "wb") as f:
            f.write(raw)
        info = dict(mt.LANG_INFO[code], wfile=path, hfile=self.hfile)
        with mock.patch.dict(mt.LANG_INFO, {code: info}):
            lg = mt.Lang(code)
        # the expectations below assume these alphabets
        self.assertEqual(lg.alphabet, ALPHABET[code])
        return lg

    # -- decoding
    def test_decode_wordlist(self):
        s = "smörgås\nöl\n"
        self.assertEqual(mt.decode_wordlist(s.encode("utf-8")), (s, "UTF-8"))
        self.assertEqual(mt.decode_wordlist(s.encode("latin-1")), (s, "ISO-8859-1"))
        self.assertEqual(mt.decode_wordlist(b"abc\ndef\n"), ("abc\ndef\n", "UTF-8"))
        # one invalid UTF-8 byte anywhere: the whole file is read as ISO-8859-1
        raw = "smörgås\n".encode("utf-8") + "öl\n".encode("latin-1")
        self.assertEqual(mt.decode_wordlist(raw), ("smÃ¶rgÃ¥s\nöl\n", "ISO-8859-1"))

    # -- Swedish list in ISO-8859-1 (like wswedish)
    SV_LINES = [
        "smörgås",          # kept, lowercase 7 letters -> pool
        "Åsa",              # kept (capitalised), 3 letters: not in pool
        "åka",              # kept, 3 letters: not in pool
        "ärlig",            # kept, pool
        "öppna",            # kept, pool
        "Stockholm",        # kept, capitalised: not in pool, a cap candidate
        "bil's",            # apostrophe: dropped
        "e-post",           # hyphen: dropped
        "3d",               # digit: dropped
        "två ord",          # space: dropped
        "naïve",            # ï is not a Swedish letter: dropped
        "Ärlig",            # kept; second spelling of "ärlig"
        "smörgås",          # exact duplicate: deduplicated
        "abcdefghijklmn",   # 14 letters: pool
        "abcdefghijklmno",  # 15 letters: kept, not in pool
        "café",             # é is a Swedish letter: kept, pool
        "zebra",            # pool
    ]
    # Sorted by code point: uppercase ASCII (S=0x53) < lowercase ASCII
    # < Ä (0xC4) < Å (0xC5) < ä (0xE4) < å (0xE5) < ö (0xF6).  (Swedish
    # alphabetical order would be å < ä < ö; code-point order is ä < å < ö.)
    SV_ENTRIES = ["Stockholm", "abcdefghijklmn", "abcdefghijklmno", "café", "smörgås",
                  "zebra", "Ärlig", "Åsa", "ärlig", "åka", "öppna"]
    SV_POOL = ["abcdefghijklmn", "café", "smörgås", "zebra", "ärlig", "öppna"]

    def test_swedish_latin1_list(self):
        raw = ("\n".join(self.SV_LINES) + "\n").encode("latin-1")
        self.assertRaises(UnicodeDecodeError, raw.decode, "utf-8")   # really latin-1
        lg = self.lang("sv", raw)
        self.assertEqual(lg.encoding, "ISO-8859-1")
        self.assertEqual(lg.raw_lines, len(self.SV_LINES))
        self.assertEqual(lg.entries, self.SV_ENTRIES)
        self.assertEqual(lg.pool, self.SV_POOL)

    def test_swedish_utf8_list_gives_the_same_entries(self):
        raw = ("\n".join(self.SV_LINES) + "\n").encode("utf-8")
        lg = self.lang("sv", raw)
        self.assertEqual(lg.encoding, "UTF-8")
        self.assertEqual(lg.entries, self.SV_ENTRIES)
        self.assertEqual(lg.pool, self.SV_POOL)

    def test_nfc_normalisation_and_dedupe(self):
        lines = [
            "café",                      # precomposed é
            "cafe\u0301",                # decomposed: NFC "café", a duplicate
            "e\u0301le\u0300ve",         # decomposed "élève"
            "Noe\u0308l",                # decomposed "Noël": capitalised, not pool
            "garc\u0327on",              # decomposed "garçon"
            "naïf",
            "œuvre",
            "e\u0301te\u0301",           # "été": 3 letters after NFC (5 code points before)
            "re\u0301e\u0301crivissions",  # 14 letters after NFC (16 before): pool
            "q\u0301uel",                # q + combining acute has no precomposed form: dropped
        ]
        lg = self.lang("fr", ("\n".join(lines) + "\n").encode("utf-8"))
        self.assertEqual(lg.encoding, "UTF-8")
        # N (0x4E) < c < g < n < r < é (0xE9) < œ (0x153); all precomposed (NFC)
        self.assertEqual(lg.entries, ["Noël", "café", "garçon", "naïf", "réécrivissions",
                                      "élève", "été", "œuvre"])
        self.assertEqual(lg.pool, ["café", "garçon", "naïf", "réécrivissions", "élève",
                                   "œuvre"])
        for w in lg.entries:
            self.assertTrue(unicodedata.is_normalized("NFC", w), w)

    def test_german_letters_and_case(self):
        lines = ["Straße", "STRASSE", "straße", "Maß", "groß", "Äpfel", "Café", "ÄPFEL"]
        lg = self.lang("de", ("\n".join(lines) + "\n").encode("utf-8"))
        # é is not a German letter ("Café" dropped); upper-case umlauts are letters.
        # M (0x4D) < S < "STRASSE" < "Straße" (T < t) < g < s < Ä (0xC4); "ÄPFEL" < "Äpfel"
        self.assertEqual(lg.entries, ["Maß", "STRASSE", "Straße", "groß", "straße",
                                      "ÄPFEL", "Äpfel"])
        self.assertEqual(lg.pool, ["groß", "straße"])

    def test_pool_length_bounds(self):
        words = ["abc", "abcd", "abcdefghijklmn", "abcdefghijklmno", "Abcde", "xyzw"]
        lg = self.lang("es", ("\n".join(words) + "\n").encode("utf-8"))
        self.assertEqual(lg.entries, sorted(words))
        self.assertEqual(lg.pool, ["abcd", "abcdefghijklmn", "xyzw"])

    # -- order
    def test_hash_order_is_the_documented_key(self):
        lg = self.lang("sv", ("\n".join(self.SV_LINES) + "\n").encode("latin-1"))
        self.assertEqual(list(lg.order), sorted(self.SV_POOL, key=lambda w: doc_hkey("sv", w)))

    def test_hash_order_across_bands(self):
        # HashOrder sorts lazily in key bands; with tiny bands it must still
        # give the full sort by the documented key.
        words = ["w%03d" % i for i in range(200)]
        with mock.patch.object(mt.HashOrder, "NBANDS_PER", 16):
            ho = mt.HashOrder("xx", words)
            self.assertGreater(ho.nbands, 10)
            got = list(ho)
        self.assertEqual(got, sorted(words, key=lambda w: doc_hkey("xx", w)))

    def test_cap_candidates(self):
        # cap: entries of 4-14 letters, any case, whose lowercase form has exactly
        # one spelling in the list, ordered by the key of the lowercase form.
        # "ärlig"/"Ärlig" have two spellings -> neither; "Åsa", "åka" are 3 letters;
        # "abcdefghijklmno" is 15.
        lg = self.lang("sv", ("\n".join(self.SV_LINES) + "\n").encode("latin-1"))
        expected = ["Stockholm", "abcdefghijklmn", "café", "smörgås", "zebra", "öppna"]
        got = list(mt.CapOrder(lg))
        self.assertEqual(got, sorted(expected, key=lambda w: doc_hkey("sv", w.lower())))
        self.assertEqual(lg.cap_capitalised, 1)          # only "Stockholm"


# ============================================================================ hyphenation

# Pattern files: (charset, lines).  Expected results are derived by hand in the
# comments of the tests (and agree with libhyphen 2.8.8's hnj_hyphen_hyphenate3
# called with the file's hyphenmins, like check_hyphen.py does).
LIANG = ["hy3ph", "he2n", "hena4", "hen5at", "1na", "n2at", "1tio", "2io", "o2n"]
EVERY_GAP = ["1a1", "1b1", "1n1"]          # every gap between a, b, n is odd
COMPOUND_L2 = ["1a1", "1b1", "1c1", "1d1", "1n1", "1t1"]


def compound_file(lh, rh, clh, crh):
    return ["LEFTHYPHENMIN %d" % lh, "RIGHTHYPHENMIN %d" % rh,
            "COMPOUNDLEFTHYPHENMIN %d" % clh, "COMPOUNDRIGHTHYPHENMIN %d" % crh,
            "% compound level: a boundary between n and t",
            "n1t",
            "NEXTLEVEL",
            "% syllable level: every gap odd"] + COMPOUND_L2


class HyphenatorTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="test_make_tasks.")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.n = 0

    def hyph(self, lines, charset="UTF-8", mode="libhyphen"):
        self.n += 1
        path = write_hyph(os.path.join(self.tmp, "p%d.dic" % self.n), charset, lines)
        return mt.Hyphenator(path, mode=mode)

    def test_liang_example(self):
        # ".hyphenation." with Liang's patterns; value of the gap after letter k:
        #   hy3ph  -> after y (1): 3       he2n  -> after e (4): 2
        #   hena4  -> after a (6): 4       hen5at-> after n (5): 5
        #   1na    -> after e (4): 1       n2at  -> after n (5): 2
        #   1tio   -> after a (6): 1       2io   -> after t (7): 2
        #   o2n    -> after o (9): 2
        # max per gap: 1:3 4:2 5:5 6:4 7:2 9:2 -> odd after 1 and 5: hy-phen-ation.
        # (libhyphen's longest-match skips n2at, 1na and 2io here, which changes
        # no odd value.)  "nation": n2at 0:2, 1tio 1:1, o2n 4:2 -> na-tion.
        for mode in mt.HYPH_MODES:
            h = self.hyph(["% Liang's patterns (TeXbook, appendix H)"] + LIANG, mode=mode)
            self.assertEqual(h.hyphenate("hyphenation"), "hy-phen-ation", mode)
            self.assertEqual(h.hyphenate("nation"), "na-tion", mode)
            self.assertEqual(h.points("hyphenation"), [1, 5], mode)
            self.assertEqual(h.hyphenate("hyphenation", sep="="), "hy=phen=ation", mode)

    def test_default_hyphenmin_is_2_3(self):
        # every gap of "banana" is odd (0..4); no LEFT/RIGHTHYPHENMIN in the file:
        # the benchmark default 2/3 -> no hyphen before 2 letters, none with fewer
        # than 3 letters after it: gaps 1, 2 -> "ba-n-ana".
        h = self.hyph(EVERY_GAP)
        self.assertEqual((h.lhmin, h.rhmin), (2, 3))
        self.assertEqual(h.hyphenate("banana"), "ba-n-ana")

    def test_hyphenmin_from_file(self):
        # LEFTHYPHENMIN 3, RIGHTHYPHENMIN 2: gaps 2, 3 -> "ban-a-na"
        h = self.hyph(["LEFTHYPHENMIN 3", "RIGHTHYPHENMIN 2"] + EVERY_GAP)
        self.assertEqual((h.lhmin, h.rhmin), (3, 2))
        self.assertEqual(h.hyphenate("banana"), "ban-a-na")
        # 1/1: every gap -> "b-a-n-a-n-a"
        h = self.hyph(["LEFTHYPHENMIN 1", "RIGHTHYPHENMIN 1"] + EVERY_GAP)
        self.assertEqual(h.hyphenate("banana"), "b-a-n-a-n-a")
        # only RIGHTHYPHENMIN given: left stays at the default 2 -> gaps 1..3
        h = self.hyph(["RIGHTHYPHENMIN 2"] + EVERY_GAP)
        self.assertEqual(h.hyphenate("banana"), "ba-n-a-na")

    def test_comments_and_blank_lines(self):
        # '%' and '#' lines are comments, even when they look like patterns or
        # keywords; blank lines are ignored.  Only "1na" counts: gaps 1 and 3 of
        # "banana"; default right min 3 removes gap 3 -> "ba-nana".
        h = self.hyph(["% 1a1", "#1b1", "", "% RIGHTHYPHENMIN 1", "1na",
                       "# LEFTHYPHENMIN 1", "   ", "%NEXTLEVEL"])
        self.assertEqual((h.lhmin, h.rhmin), (2, 3))
        self.assertEqual(h.params, {})
        self.assertFalse(h.two_level_file)
        self.assertEqual(h.n_patterns[-1], 1)       # only "1na" was read as a pattern
        self.assertEqual(h.hyphenate("banana"), "ba-nana")
        self.assertEqual(h.hyphenate("abba"), "abba")

    def test_duplicate_pattern_last_wins(self):
        # "na" (all zeros) after "1na" replaces it: no hyphen; the other way round, 1na
        self.assertEqual(self.hyph(["1na", "na"]).hyphenate("banana"), "banana")
        self.assertEqual(self.hyph(["na", "1na"]).hyphenate("banana"), "ba-nana")

    def test_longest_match_semantics(self):
        # "bcd" (no digits) and "c1d".  libhyphen: at the end of "abcd" the longest
        # string that is a prefix of a pattern is "bcd"; it is a pattern (all
        # zeros), so "c1d" is never looked at: no hyphen.  Textbook Liang ("liang"
        # mode, single-level file) applies every pattern: c-d -> "abc-def".
        for lines in (["c1d", "bcd"], ["bcd", "c1d"]):
            self.assertEqual(self.hyph(lines).hyphenate("abcdef"), "abcdef")
            self.assertEqual(self.hyph(lines, mode="liang").hyphenate("abcdef"), "abc-def")
        # without the blocking entry both modes agree
        self.assertEqual(self.hyph(["c1d"]).hyphenate("abcdef"), "abc-def")

    def test_charsets(self):
        # "1gås": a break before g of "smörgås" (4 letters before, 3 after).
        # The non-ASCII letter is in the pattern, so it only matches if the file
        # is decoded with the charset named on its first line.
        for charset in ("ISO8859-1", "UTF-8"):
            h = self.hyph(["1gås"], charset=charset)
            self.assertEqual(h.charset, charset)
            self.assertEqual(h.hyphenate("smörgås"), "smör-gås", charset)
        # ISO8859-2 (Polish): ł is byte 0xB3 (in ISO8859-1 that byte is "³")
        h = self.hyph(["b1ł"], charset="ISO8859-2")
        self.assertEqual(h.hyphenate("jabłko"), "jab-łko")
        # a latin-1 file declared as UTF-8 is not silently misread
        path = write_hyph(os.path.join(self.tmp, "bad.dic"), "UTF-8", ["1gås"], codec="latin-1")
        self.assertRaises(UnicodeDecodeError, mt.Hyphenator, path)
        path = write_hyph(os.path.join(self.tmp, "koi.dic"), "KOI8-R", ["1na"], codec="ascii")
        self.assertRaises(ValueError, mt.Hyphenator, path)

    def test_nextlevel_compound(self):
        # Level 1 ("n1t"): compound boundary between n and t.  Level 2: every gap
        # odd.  Word "abcdntabcd" (gaps 0..8): parts "abcdn" | "tabcd", boundary
        # gap 4.  Each part is hyphenated with level 2 alone; COMPOUNDRIGHTHYPHENMIN
        # applies at the end of "abcdn" (inner boundary), COMPOUNDLEFTHYPHENMIN at
        # the start of "tabcd"; LEFT/RIGHTHYPHENMIN at the ends of the whole word.
        #  2/2/2/2: part 1 gaps 0,1,2 (crh 2 drops 3); part 2 gaps 6,7,8 (clh 2
        #           drops 5); lh 2 drops 0, rh 2 drops 8 -> 1,2,4,6,7
        #  rh 3:    also drops 7                           -> 1,2,4,6
        #  clh 3:   part 2 also drops 6                    -> 1,2,4,7
        #  crh 3:   part 1 also drops 2                    -> 1,4,6,7
        # "abcabcd" has no boundary: plain level 2 with lh/rh only (gaps 1..4);
        # the compound minimums do not apply to it.
        cases = {(2, 2, 2, 2): "ab-c-dn-ta-b-cd", (2, 3, 2, 2): "ab-c-dn-ta-bcd",
                 (2, 2, 3, 2): "ab-c-dn-tab-cd", (2, 2, 2, 3): "ab-cdn-ta-b-cd"}
        for mins, expected in cases.items():
            h = self.hyph(compound_file(*mins), charset="ISO8859-1")
            self.assertTrue(h.two_level_file)
            self.assertEqual((h.lhmin, h.rhmin, h.clhmin, h.crhmin), mins)
            self.assertEqual(h.hyphenate("abcdntabcd"), expected, mins)
            self.assertEqual(h.hyphenate("abcabcd"),
                             "ab-c-a-bcd" if mins[1] == 3 else "ab-c-a-b-cd", mins)
        # two boundaries: "abcdntabcdntabcd" with 2/2/2/2 -> parts abcdn|tabcdn|tabcd:
        # gaps 1,2 | 4 | 6,7,8 (clh drops 5, crh drops 9) | 10 | 12,13 (clh drops
        # 11, rh drops 14)
        h = self.hyph(compound_file(2, 2, 2, 2), charset="ISO8859-1")
        self.assertEqual(h.hyphenate("abcdntabcdntabcd"), "ab-c-dn-ta-b-c-dn-ta-b-cd")

    def test_more_than_one_nextlevel_is_an_error(self):
        path = write_hyph(os.path.join(self.tmp, "three.dic"), "UTF-8",
                          ["a1b", "NEXTLEVEL", "b1c", "NEXTLEVEL", "c1d"])
        self.assertRaises(ValueError, mt.Hyphenator, path)


class RealPatternFilesTest(unittest.TestCase):
    """The eight Debian pattern files: properties from the README's tables and
    words documented there (checked against libhyphen 2.8.8 when this test was
    written)."""

    @classmethod
    def setUpClass(cls):
        cls.problem = missing_inputs()
        cls.h = {}

    def get(self, code, mode="libhyphen"):
        if self.problem:
            self.fail(self.problem)
        if (code, mode) not in self.h:
            self.h[code, mode] = mt.Hyphenator(mt.LANG_INFO[code]["hfile"], mode=mode)
        return self.h[code, mode]

    def test_charsets_and_hyphenmins(self):
        charset = {"de": "ISO8859-1", "fr": "UTF-8", "es": "UTF-8", "it": "UTF-8",
                   "pt": "ISO8859-1", "nl": "ISO8859-1", "sv": "ISO8859-1", "pl": "ISO8859-2"}
        mins = {"fr": (2, 2), "es": (2, 2), "sv": (1, 2)}     # others: default 2/3
        for code in LANGS:
            h = self.get(code)
            self.assertEqual(h.charset, charset[code], code)
            self.assertEqual((h.lhmin, h.rhmin), mins.get(code, (2, 3)), code)
            self.assertEqual(h.nonstandard, 0, code)
        self.assertTrue(self.get("de").two_level_file)

    def test_documented_words(self):
        cases = [("de", "verschimmelt", "ver-schim-melt"),
                 ("de", "erstrebenswert", "er-stre-bens-wert"),
                 ("de", "zuarbeitendem", "zu-ar-bei-ten-dem"),
                 ("fr", "délimitions", "dé-li-mi-tions"),
                 ("pl", "obnaszalibyśmy", "ob-na-sza-li-by-śmy"),
                 ("it", "notarile", "no-tarile"),
                 ("it", "truffarono", "truf-farono")]
        for code, word, expected in cases:
            self.assertEqual(self.get(code).hyphenate(word), expected, (code, word))
        # textbook matching on the syllable level (README)
        self.assertEqual(self.get("de", "liang").hyphenate("zuarbeitendem"),
                         "zu-a-r-bei-ten-dem")
        # the Italian quirk: textbook Liang finds more points than libhyphen
        for word in ("notarile", "truffarono"):
            lib, liang = self.get("it").points(word), self.get("it", "liang").points(word)
            self.assertLess(set(lib), set(liang), word)


# ============================================================================ real data

def app_of(task):
    return task.split("-")[0]


def lang_of(task):
    return task.split("-")[1]


def word_of(app, prompt, answer):
    """The dictionary word an example is about (README, "Tasks")."""
    return {"spell": answer, "hyph": prompt, "rev": prompt, "cap": prompt,
            "accent": answer, "vowel": answer}[app].lower()


def strip_marks(w):
    return "".join(c for c in unicodedata.normalize("NFD", w) if not unicodedata.combining(c))


def one_edit(a, b):
    """a and b differ by one substitution, deletion, insertion or adjacent
    transposition."""
    if a == b:
        return False
    if len(a) == len(b):
        d = [i for i in range(len(a)) if a[i] != b[i]]
        return len(d) == 1 or (len(d) == 2 and d[1] == d[0] + 1
                               and a[d[0]] == b[d[1]] and a[d[1]] == b[d[0]])
    if abs(len(a) - len(b)) != 1:
        return False
    s, t = (a, b) if len(a) < len(b) else (b, a)
    return any(t[:i] + t[i + 1:] == s for i in range(len(t)))


def independent_rev_orders():
    """Per language: the lowercase 4-14-letter words of the word list (read here
    independently of make_tasks), in the documented hash order; only the first
    300 + 5000 + 36000 are kept (at most 40 x 300 x 3 strings are excluded)."""
    keep = 300 + 5000 + 40 * 300 * 3
    orders = {}
    for code in LANGS:
        with open(mt.LANG_INFO[code]["wfile"], "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        text = unicodedata.normalize("NFC", text)
        words = set(re.findall("^[%s]{4,14}$" % re.escape(ALPHABET[code]), text, re.M))
        words = list(words)
        h = functools.partial(hashlib.blake2b, digest_size=8, key=b"hydraopt-tasks-v1")
        keys = list(map(operator.methodcaller("digest"),
                        map(h, map(str.encode, map((code + "\x1f").__add__, words)))))
        # the keys are uniform: take those below twice the expected quantile,
        # falling back to all of them if that is not enough
        limit = min(1 << 64, (2 * keep << 64) // max(1, len(words)))
        thr = (limit - 1).to_bytes(8, "big") if limit < 1 << 64 else b"\xff" * 9
        cand = sorted((k, w) for k, w in zip(keys, words) if k <= thr)
        if len(cand) < keep:
            cand = sorted(zip(keys, words))
        orders[code] = [w for _, w in cand[:keep]]
    return orders


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class SplitOnRealDataTest(unittest.TestCase):
    """Regenerates the data once (setUpClass) into a temporary directory."""

    @classmethod
    def setUpClass(cls):
        cls.problem = missing_inputs()
        cls.tmp = None
        if cls.problem:
            return
        cls.tmp = tempfile.mkdtemp(prefix="test_make_tasks.")
        cls.out = os.path.join(cls.tmp, "tasks")
        logpath = os.path.join(cls.tmp, "make_tasks.log")
        try:
            with open(logpath, "wb") as log:
                proc = subprocess.Popen([sys.executable, MAKE_TASKS, cls.out, "--quiet"],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=cls.tmp)
                try:
                    # overlap the independent reading of the lists with the run
                    cls.rev_orders = independent_rev_orders()
                    rc = proc.wait(timeout=1800)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            if rc != 0:
                with open(logpath, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-3000:]
                cls.problem = "make_tasks.py %s failed (exit %d):\n%s" % (cls.out, rc, tail)
                return
            cls.data = {}
            for t in TASKS:
                for split in ("train", "test", "calib"):
                    p = os.path.join(cls.out, t, split + ".jsonl")
                    cls.data[t, split] = read_jsonl(p) if os.path.exists(p) else None
        except Exception as e:  # reported by every test, not as a class error
            cls.problem = "regenerating the data failed: %r" % (e,)

    @classmethod
    def tearDownClass(cls):
        if cls.tmp:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        if self.problem:
            self.fail(self.problem)

    # -- helpers
    def examples(self, split):
        for t in TASKS:
            for ex in self.data[t, split] or []:
                yield t, ex["prompt"], ex["answer"]

    def collect_test_strings(self):
        """Every test example's prompt, answer and word, lowercased, hyph answers
        also without '-' -> set of tasks it comes from."""
        out = collections.defaultdict(set)
        for t, p, a in self.examples("test"):
            app = app_of(t)
            for s in (p, a, word_of(app, p, a)) + ((a.replace("-", ""),) if app == "hyph" else ()):
                out[s.lower()].add(t)
        return out

    def report(self, hits, what):
        hits = sorted(hits)
        return "%d %s, e.g. %s" % (len(hits), what, hits[:10])

    # -- (d) counts and format
    def test_d_40_tasks_300_test_examples_each(self):
        dirs = sorted(d for d in os.listdir(self.out) if os.path.isdir(os.path.join(self.out, d)))
        self.assertEqual(dirs, TASKS)
        self.assertEqual(len(TASKS), 40)
        for t in TASKS:
            with self.subTest(task=t):
                self.assertIsNotNone(self.data[t, "test"], "missing test.jsonl")
                self.assertIsNotNone(self.data[t, "train"], "missing train.jsonl")
                self.assertEqual(len(self.data[t, "test"]), 300)
                for split in ("train", "test"):
                    exs = self.data[t, split]
                    for ex in exs:
                        self.assertEqual(sorted(ex), ["answer", "prompt"])
                        self.assertIsInstance(ex["prompt"], str)
                        self.assertIsInstance(ex["answer"], str)
                        self.assertTrue(ex["prompt"] and ex["answer"], ex)
                    prompts = [ex["prompt"] for ex in exs]
                    self.assertEqual(len(prompts), len(set(prompts)), "duplicate prompt")
                if app_of(t) in ("cap", "accent"):
                    changed = sum(ex["prompt"] != ex["answer"] for ex in self.data[t, "test"])
                    self.assertEqual(changed, 150, "test classes not 50/50")

    def test_d_examples_follow_the_app_definitions(self):
        for t in TASKS:
            app, lang = app_of(t), lang_of(t)
            mask = str.maketrans({v: "_" for v in VOWELS[lang]})
            bad = []
            for split in ("train", "test"):
                for ex in self.data[t, split]:
                    p, a = ex["prompt"], ex["answer"]
                    w = word_of(app, p, a)
                    ok = {"spell": lambda: one_edit(p, a),
                          "hyph": lambda: (a.replace("-", "") == p and "--" not in a
                                           and a[0] != "-" and a[-1] != "-"),
                          "rev": lambda: a == p[::-1],
                          "cap": lambda: p == a.lower(),
                          "accent": lambda: p == strip_marks(a),
                          "vowel": lambda: p == a.translate(mask) and "_" in p}[app]()
                    ok = ok and 4 <= len(w) <= 14 and all(c in ALPHABET[lang] for c in w)
                    ok = ok and all(unicodedata.is_normalized("NFC", s) for s in (p, a))
                    pb, ab = len(p.encode("utf-8")), len(a.encode("utf-8"))
                    ok = ok and pb <= 30 and ab <= 30 and pb + ab + 3 <= 64
                    if not ok:
                        bad.append((split, p, a))
            self.assertEqual(bad[:10], [], t)

    # -- (a) determinism: the shipped files are what the generator writes
    def test_a_test_sets_identical_to_shipped(self):
        for t in TASKS:
            with self.subTest(task=t):
                shipped = os.path.join(SHIPPED, t, "test.jsonl")
                self.assertTrue(os.path.exists(shipped), shipped)
                with open(shipped, "rb") as f1, \
                        open(os.path.join(self.out, t, "test.jsonl"), "rb") as f2:
                    self.assertTrue(f1.read() == f2.read(),
                                    "%s differs from the regenerated file" % shipped)

    def test_a_local_train_sets_and_pretrain_identical_to_regenerated(self):
        # train.jsonl and pretrain.txt are not in git (.gitignore: only the test
        # sets ship); when a generated copy is present in assets/tasks, it must be
        # what the generator writes now (else it is stale: regenerate it).
        rels = [os.path.join(t, "train.jsonl") for t in TASKS] + ["pretrain.txt"]
        present = [r for r in rels if os.path.exists(os.path.join(SHIPPED, r))]
        if not present:
            self.skipTest("no generated train.jsonl/pretrain.txt in assets/tasks (not in git)")
        for rel in present:
            with self.subTest(file=rel):
                with open(os.path.join(SHIPPED, rel), "rb") as f1, \
                        open(os.path.join(self.out, rel), "rb") as f2:
                    self.assertTrue(f1.read() == f2.read(),
                                    "assets/tasks/%s (generated, untracked) differs from the "
                                    "regenerated file: stale, rerun make_tasks.py" % rel)

    def test_a_shipped_calib_sets_identical_to_regenerated(self):
        # calib.jsonl ships (like test.jsonl): it must be what the generator writes,
        # and the regenerated manifest.json must record it like the other files.
        with open(os.path.join(self.out, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        counts = {e["name"]: e.get("calib") for e in manifest["tasks"]}
        for t in TASKS:
            with self.subTest(task=t):
                shipped = os.path.join(SHIPPED, t, "calib.jsonl")
                regen = os.path.join(self.out, t, "calib.jsonl")
                self.assertTrue(os.path.exists(shipped), shipped)
                with open(shipped, "rb") as f1, open(regen, "rb") as f2:
                    data = f2.read()
                    self.assertTrue(f1.read() == data,
                                    "%s differs from the regenerated file" % shipped)
                rec = manifest["files"].get("%s/calib.jsonl" % t)
                self.assertEqual(rec, {"bytes": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()})
                self.assertEqual(counts[t], CALIB_N)

    # -- (e) calibration sets: drawn from train, never from any test set
    def test_e_calib_is_64_evenly_spaced_train_lines(self):
        # README: the train lines at 0-based indices floor(j * n / 64), j = 0..63,
        # in that order (n = number of train examples)
        for t in TASKS:
            with self.subTest(task=t):
                with open(os.path.join(self.out, t, "train.jsonl"), "rb") as f:
                    data = f.read()
                self.assertTrue(data.endswith(b"\n"))
                train = data[:-1].split(b"\n")
                n = len(train)
                self.assertGreaterEqual(n, CALIB_N)
                idx = [(j * n) // CALIB_N for j in range(CALIB_N)]
                self.assertEqual(idx[0], 0)
                self.assertEqual(len(set(idx)), CALIB_N)
                self.assertLess(idx[-1], n)
                with open(os.path.join(self.out, t, "calib.jsonl"), "rb") as f:
                    calib = f.read()
                self.assertEqual(calib, b"".join(train[i] + b"\n" for i in idx))
                self.assertEqual(len(self.data[t, "train"]), n)
                self.assertEqual(len(self.data[t, "calib"]), CALIB_N)
                self.assertEqual(self.data[t, "calib"],
                                 [self.data[t, "train"][i] for i in idx])

    def test_e_no_calib_prompt_is_a_test_prompt_of_any_task(self):
        # all 40 test sets, all languages; compared exactly and lowercased
        prompts = collections.defaultdict(set)
        for t, p, a in self.examples("test"):
            prompts[p].add(t)
            prompts[p.lower()].add(t)
        self.assertGreaterEqual(len(prompts), 300)
        hits = set()
        for t, p, a in self.examples("calib"):
            for s in (p, p.lower()):
                if s in prompts:
                    hits.add((t, p, a, tuple(sorted(prompts[s]))))
        self.assertFalse(hits, self.report(hits, "calib prompts equal to a test prompt "
                                                 "(calib task, prompt, answer, test tasks)"))

    def test_e_shipped_calib_never_overlaps_shipped_test_sets(self):
        # the same on the shipped files alone (no regeneration needed to see it):
        # no shipped calib example or prompt occurs in any shipped test set
        test_lines, test_prompts = set(), set()
        for t in TASKS:
            for ex in read_jsonl(os.path.join(SHIPPED, t, "test.jsonl")):
                test_lines.add((ex["prompt"], ex["answer"]))
                test_prompts.add(ex["prompt"].lower())
        self.assertGreater(len(test_prompts), 5000)
        hits = []
        for t in TASKS:
            for ex in read_jsonl(os.path.join(SHIPPED, t, "calib.jsonl")):
                if (ex["prompt"], ex["answer"]) in test_lines or \
                        ex["prompt"].lower() in test_prompts:
                    hits.append((t, ex["prompt"], ex["answer"]))
        self.assertEqual(hits, [])

    # -- (b) no leakage from test into train
    def test_b_no_test_string_is_a_train_word_or_answer(self):
        ts = self.collect_test_strings()
        hits = set()
        for t, p, a in self.examples("train"):
            app = app_of(t)
            for s in {word_of(app, p, a), a.lower(), a.replace("-", "").lower()}:
                if s in ts:
                    hits.add((t, p, a, s, tuple(sorted(ts[s]))))
        self.assertFalse(hits, self.report(hits, "train examples whose word/answer is a test "
                                                 "string (train task, prompt, answer, string, "
                                                 "test tasks)"))

    def test_b_no_train_prompt_in_the_same_language_is_a_test_prompt(self):
        # (prompts of different languages may coincide: README, "by design")
        by_lang = collections.defaultdict(set)
        for t, p, a in self.examples("test"):
            by_lang[lang_of(t)].add(p.lower())
        hits = {(t, p, a) for t, p, a in self.examples("train")
                if p.lower() in by_lang[lang_of(t)]}
        self.assertFalse(hits, self.report(hits, "train prompts equal to a test prompt of "
                                                 "the same language"))

    def test_b_no_train_prompt_is_a_test_word_or_answer(self):
        # README: "no test word appears in *any* train example of any task".
        # A typo or accent-stripped prompt of one language can be a test word
        # of another (spell-es "sotte -> sote" with French test word "sotte"):
        # make_tasks.py once let four such prompts through.
        words = collections.defaultdict(set)
        for t, p, a in self.examples("test"):
            app = app_of(t)
            for s in {word_of(app, p, a), a.lower(), a.replace("-", "").lower()}:
                words[s].add(t)
        hits = set()
        for t, p, a in self.examples("train"):
            if p.lower() in words:
                hits.add((t, p, a, tuple(sorted(words[p.lower()]))))
        self.assertFalse(hits, self.report(hits, "train prompts that are a test word/answer "
                                                 "(train task, prompt, answer, test tasks)"))

    # -- (c) pretraining text
    def test_c_no_pretrain_token_is_a_test_string(self):
        ts = self.collect_test_strings()
        hits = set()
        n = 0
        with open(os.path.join(self.out, "pretrain.txt"), encoding="utf-8") as f:
            for line in f:
                for tok in line.split():
                    n += 1
                    if tok.lower() in ts:
                        hits.add(tok)
        self.assertGreater(n, 100000)
        self.assertFalse(hits, self.report(hits, "pretrain.txt tokens that are test strings"))

    # -- the documented split rule, recomputed independently on the rev tasks
    def test_split_rule_on_rev_tasks(self):
        # rev takes every lowercase 4-14-letter word, so: test = the first 300
        # words in hkey(lang, word) order; train = the first 5000 words in that
        # order that are not excluded test strings (of any task).
        ts = self.collect_test_strings()
        for code in LANGS:
            with self.subTest(lang=code):
                order = self.rev_orders[code]
                test = [ex["prompt"] for ex in self.data["rev-" + code, "test"]]
                train = [ex["prompt"] for ex in self.data["rev-" + code, "train"]]
                self.assertEqual(test, order[:300])
                expected = [w for w in order if w not in ts][:5000]
                self.assertEqual(len(expected), 5000)
                self.assertEqual(train, expected)


if __name__ == "__main__":
    unittest.main()
