#!/usr/bin/python3
"""Optional check: make_tasks.Hyphenator (mode "libhyphen") against the real
libhyphen (the C library LibreOffice uses) on the lowercase words of each list.

Needs libhyphen.so.0, e.g. `apt-get install libhyphen0`, or without installing:
  apt-get download libhyphen0 && dpkg -x libhyphen0_*.deb x
  /usr/bin/python3 lab/data/check_hyphen.py --lib x/usr/lib/x86_64-linux-gnu/libhyphen.so.0

Prints, per language, the number of words checked, the number that differ
from libhyphen (expected: 0) and how many the "liang" mode would change.
"""

import argparse
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tasks as mt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="libhyphen.so.0")
    ap.add_argument("--max-words", type=int, default=1_000_000, help="per language")
    args = ap.parse_args()
    lib = ctypes.CDLL(args.lib)
    lib.hnj_hyphen_load.restype = ctypes.c_void_p
    lib.hnj_hyphen_load.argtypes = [ctypes.c_char_p]
    PP = ctypes.POINTER
    lib.hnj_hyphen_hyphenate3.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
        PP(PP(ctypes.c_char_p)), PP(PP(ctypes.c_int)), PP(PP(ctypes.c_int)),
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    bad_total = 0
    for code in mt.LANGS:
        info = mt.LANG_INFO[code]
        H = mt.Hyphenator(info["hfile"], mode="libhyphen")
        HL = mt.Hyphenator(info["hfile"], mode="liang")
        d = lib.hnj_hyphen_load(info["hfile"].encode())
        with open(info["wfile"], "rb") as f:
            text, _ = mt.decode_wordlist(f.read())
        words = [w for w in text.split("\n")
                 if w and w.islower() and all(c in info["alphabet"] for c in w)]
        words = words[::max(1, len(words) // args.max_words)][:args.max_words]
        bad = diff_liang = 0
        for w in words:
            b = w.encode(H.codec)
            hy = ctypes.create_string_buffer(len(b) + 5)
            rep, pos, cut = PP(ctypes.c_char_p)(), PP(ctypes.c_int)(), PP(ctypes.c_int)()
            lib.hnj_hyphen_hyphenate3(d, b, len(b), hy, None, ctypes.byref(rep),
                                      ctypes.byref(pos), ctypes.byref(cut),
                                      H.lhmin, H.rhmin, 0, 0)
            ref = [k for k in range(len(w)) if hy.raw[k] & 1]
            if H.points(w) != ref:
                bad += 1
                if bad <= 5:
                    print("  differs:", code, w, H.points(w), "libhyphen", ref)
            if HL.points(w) != ref:
                diff_liang += 1
        bad_total += bad
        print("%s: %d words, %d differ from libhyphen; liang mode would change %d (%.2f%%)" % (
            code, len(words), bad, diff_liang, 100.0 * diff_liang / max(1, len(words))))
    sys.exit(1 if bad_total else 0)


if __name__ == "__main__":
    main()
