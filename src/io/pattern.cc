#include "io/pattern.h"

#include <bitset>
#include <cctype>

#include "hydraopt/error.h"

namespace hydraopt::io {

using ByteSet = std::bitset<256>;

namespace {

using Inst = SuffixRegex::Inst;

struct Node {
  enum Kind { kSet, kCat, kAlt, kRepeat, kBegin, kEnd };
  Kind kind = kCat;
  ByteSet set;
  std::vector<Node> kids;
  int min = 0, max = -1;  ///< kRepeat; max -1 is unbounded
};

Node node(Node::Kind kind, ByteSet set = {}) {
  Node n;
  n.kind = kind;
  n.set = set;
  return n;
}

Inst inst(Inst::Op op, ByteSet set = {}) {
  Inst i;
  i.op = op;
  i.set = set;
  return i;
}

ByteSet range(unsigned lo, unsigned hi) {
  ByteSet s;
  for (unsigned c = lo; c <= hi; ++c) s.set(c);
  return s;
}

ByteSet digit() { return range('0', '9'); }
ByteSet word() { return range('a', 'z') | range('A', 'Z') | digit() | range('_', '_'); }
ByteSet space() { return range('\t', '\r') | range(' ', ' '); }  // \t \n \v \f \r and space
ByteSet single(unsigned char c) { return range(c, c); }

// Recursive descent over the key. Nesting is bounded by the key length cap.
class Parser {
 public:
  Parser(std::string_view key, const std::string& file) : p_(key), file_(file) {}

  Node parse() {
    Node n = alternation();
    if (pos_ < p_.size()) fail("unmatched ')'");
    return n;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(file_, "",
                "pattern key '" + std::string(p_) + "' is not a valid regular expression: " + why +
                    " (at offset " + std::to_string(pos_) + ")");
  }
  [[noreturn]] void unsupported(const std::string& what) const {
    throw Error(file_, "",
                "pattern key '" + std::string(p_) + "' uses " + what +
                    ", which hydraopt's pattern matcher does not support");
  }
  bool more() const { return pos_ < p_.size(); }
  char peek() const { return p_[pos_]; }

  Node alternation() {
    Node alt = node(Node::kAlt);
    alt.kids.push_back(concatenation());
    while (more() && peek() == '|') {
      ++pos_;
      alt.kids.push_back(concatenation());
    }
    return alt.kids.size() == 1 ? std::move(alt.kids[0]) : alt;
  }

  Node concatenation() {
    Node cat = node(Node::kCat);
    while (more() && peek() != '|' && peek() != ')') cat.kids.push_back(repeat());
    return cat;
  }

  int number() {
    if (!more() || peek() < '0' || peek() > '9') fail("expected a number in {}");
    long v = 0;
    while (more() && peek() >= '0' && peek() <= '9') {
      v = v * 10 + (peek() - '0');
      if (v > kMaxPatternRepeat) fail("repeat count above " + std::to_string(kMaxPatternRepeat));
      ++pos_;
    }
    return static_cast<int>(v);
  }

  Node repeat() {
    const bool assertion = more() && (peek() == '^' || peek() == '$');
    Node atom_node = atom();
    if (!more()) return atom_node;
    int lo, hi;
    switch (peek()) {
      case '*':
        lo = 0, hi = -1, ++pos_;
        break;
      case '+':
        lo = 1, hi = -1, ++pos_;
        break;
      case '?':
        lo = 0, hi = 1, ++pos_;
        break;
      case '{': {
        ++pos_;
        lo = hi = number();
        if (more() && peek() == ',') {
          ++pos_;
          hi = more() && peek() == '}' ? -1 : number();
        }
        if (!more() || peek() != '}') fail("unterminated {}");
        ++pos_;
        if (hi >= 0 && hi < lo) fail("{m,n} with n < m");
        break;
      }
      default:
        return atom_node;
    }
    if (assertion) fail("nothing to repeat");
    if (more() && peek() == '?') ++pos_;  // lazy: same language
    if (more() && (peek() == '*' || peek() == '+' || peek() == '?' || peek() == '{'))
      fail("nothing to repeat");
    Node r = node(Node::kRepeat);
    r.min = lo;
    r.max = hi;
    r.kids.push_back(std::move(atom_node));
    return r;
  }

  // An escape after '\' (pos_ at the escaped character). Sets *cls when it
  // stands for a class (\d, \w, ...), so ranges can refuse it.
  ByteSet escape(bool in_class, bool* cls) {
    if (!more()) fail("trailing backslash");
    const char c = p_[pos_++];
    *cls = false;
    switch (c) {
      case 'd':
        *cls = true;
        return digit();
      case 'D':
        *cls = true;
        return ~digit();
      case 'w':
        *cls = true;
        return word();
      case 'W':
        *cls = true;
        return ~word();
      case 's':
        *cls = true;
        return space();
      case 'S':
        *cls = true;
        return ~space();
      case 't':
        return single('\t');
      case 'n':
        return single('\n');
      case 'r':
        return single('\r');
      case 'f':
        return single('\f');
      case 'v':
        return single('\v');
      case '0':
        return single('\0');
      case 'b':
        if (in_class) return single('\b');
        unsupported("a word boundary (\\b)");
      case 'B':
        unsupported("a word boundary (\\B)");
      case 'x': {
        unsigned v = 0;
        for (int k = 0; k < 2; ++k) {
          if (!more() || !std::isxdigit(static_cast<unsigned char>(peek())))
            fail("\\x needs two hex digits");
          const char h = p_[pos_++];
          v = v * 16 + static_cast<unsigned>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
        }
        return single(static_cast<unsigned char>(v));
      }
      default:
        break;
    }
    if (c >= '1' && c <= '9') unsupported("a backreference");
    if (std::isalnum(static_cast<unsigned char>(c))) unsupported(std::string("the escape \\") + c);
    return single(static_cast<unsigned char>(c));  // escaped punctuation: itself
  }

  ByteSet bracket() {  // after '['
    bool negate = false;
    if (more() && peek() == '^') negate = true, ++pos_;
    ByteSet s;
    while (true) {
      if (!more()) fail("unterminated [");
      if (peek() == ']') {
        ++pos_;
        break;
      }
      bool cls = false;
      ByteSet lo_set;
      unsigned lo = 0;
      if (peek() == '\\') {
        ++pos_;
        lo_set = escape(true, &cls);
      } else {
        lo_set = single(static_cast<unsigned char>(p_[pos_++]));
      }
      if (!cls) lo = static_cast<unsigned>(lo_set._Find_first());
      if (pos_ + 1 < p_.size() && peek() == '-' && p_[pos_ + 1] != ']') {
        ++pos_;
        bool hi_cls = false;
        ByteSet hi_set;
        if (peek() == '\\') {
          ++pos_;
          hi_set = escape(true, &hi_cls);
        } else {
          hi_set = single(static_cast<unsigned char>(p_[pos_++]));
        }
        if (cls || hi_cls) fail("a class escape cannot bound a range");
        const unsigned hi = static_cast<unsigned>(hi_set._Find_first());
        if (hi < lo) fail("range out of order");
        s |= range(lo, hi);
      } else {
        s |= lo_set;
      }
    }
    return negate ? ~s : s;
  }

  Node atom() {
    const char c = p_[pos_++];
    Node n = node(Node::kSet);
    switch (c) {
      case '(': {
        if (more() && peek() == '?') {
          if (pos_ + 1 < p_.size() && p_[pos_ + 1] == ':') {
            pos_ += 2;
          } else {
            unsupported("lookaround or a group extension '(?'");
          }
        }
        Node inner = alternation();
        if (!more() || peek() != ')') fail("unmatched '('");
        ++pos_;
        return inner;
      }
      case '[':
        n.set = bracket();
        return n;
      case '.':
        n.set = ~(single('\n') | single('\r'));
        return n;
      case '^':
        return node(Node::kBegin);
      case '$':
        return node(Node::kEnd);
      case '\\': {
        bool cls;
        n.set = escape(false, &cls);
        return n;
      }
      case '*':
      case '+':
      case '?':
      case '{':
        --pos_;
        fail("nothing to repeat");
      default:
        n.set = single(static_cast<unsigned char>(c));
        return n;
    }
  }

  std::string_view p_;
  const std::string& file_;
  size_t pos_ = 0;
};

class Compiler {
 public:
  Compiler(std::vector<Inst>& prog, std::string_view key, const std::string& file)
      : prog_(prog), key_(key), file_(file) {}

  void emit(const Node& n) {
    switch (n.kind) {
      case Node::kSet:
        push(inst(Inst::kByte, n.set));
        break;
      case Node::kBegin:
        push(inst(Inst::kBegin));
        break;
      case Node::kEnd:
        push(inst(Inst::kEnd));
        break;
      case Node::kCat:
        for (const Node& k : n.kids) emit(k);
        break;
      case Node::kAlt: {
        std::vector<int> jumps;
        for (size_t i = 0; i < n.kids.size(); ++i) {
          if (i + 1 < n.kids.size()) {
            const int split = push(inst(Inst::kSplit));
            prog_[split].x = split + 1;
            emit(n.kids[i]);
            jumps.push_back(push(inst(Inst::kJmp)));
            prog_[split].y = size();
          } else {
            emit(n.kids[i]);
          }
        }
        for (int j : jumps) prog_[j].x = size();
        break;
      }
      case Node::kRepeat: {
        const Node& k = n.kids[0];
        for (int i = 0; i < n.min; ++i) emit(k);
        if (n.max < 0) {
          const int split = push(inst(Inst::kSplit));
          prog_[split].x = split + 1;
          emit(k);
          const int jmp = push(inst(Inst::kJmp));
          prog_[jmp].x = split;
          prog_[split].y = size();
        } else {
          std::vector<int> splits;
          for (int i = n.min; i < n.max; ++i) {
            const int split = push(inst(Inst::kSplit));
            prog_[split].x = split + 1;
            splits.push_back(split);
            emit(k);
          }
          for (int s : splits) prog_[s].y = size();
        }
        break;
      }
    }
  }

  int push(Inst i) {
    if (prog_.size() >= kMaxPatternProgram) {
      throw Error(file_, "",
                  "pattern key '" + std::string(key_) + "' is too complex (more than " +
                      std::to_string(kMaxPatternProgram) + " states once repeats are expanded)");
    }
    prog_.push_back(i);
    return size() - 1;
  }
  int size() const { return static_cast<int>(prog_.size()); }

 private:
  std::vector<Inst>& prog_;
  std::string_view key_;
  const std::string& file_;
};

// The states of one step: a sparse set (O(1) insert and clear).
struct StateSet {
  std::vector<int> dense, where;
  size_t n = 0;
  explicit StateSet(size_t size) : dense(size), where(size) {}
  bool contains(int pc) const {
    const size_t w = static_cast<size_t>(where[static_cast<size_t>(pc)]);
    return w < n && dense[w] == pc;
  }
  void insert(int pc) {
    where[static_cast<size_t>(pc)] = static_cast<int>(n);
    dense[n++] = pc;
  }
};

}  // namespace

SuffixRegex::SuffixRegex(std::string_view key, const std::string& file) {
  if (key.size() > kMaxPatternLength) {
    throw Error(file, "",
                "pattern key longer than " + std::to_string(kMaxPatternLength) + " characters: '" +
                    std::string(key.substr(0, 40)) + "...'");
  }
  // (?:.*\.)?(?:key)$
  Node any_dot = node(Node::kCat);
  Node star = node(Node::kRepeat);
  star.kids.push_back(node(Node::kSet, ~(single('\n') | single('\r'))));
  any_dot.kids.push_back(std::move(star));
  any_dot.kids.push_back(node(Node::kSet, single('.')));
  Node prefix = node(Node::kRepeat);
  prefix.max = 1;
  prefix.kids.push_back(std::move(any_dot));
  Node whole = node(Node::kCat);
  whole.kids.push_back(std::move(prefix));
  whole.kids.push_back(Parser(key, file).parse());
  whole.kids.push_back(node(Node::kEnd));
  Compiler c(prog_, key, file);
  c.emit(whole);
  c.push(inst(Inst::kMatch));
}

bool SuffixRegex::full_match(std::string_view s) const {
  const size_t n = prog_.size();
  StateSet cur(n), next(n), seen(n);
  std::vector<int> stack;
  // Follows the empty moves from pc at position `at`; adds the states that
  // consume a byte (or accept) to `to`. `seen` marks every visited state.
  auto add = [&](StateSet& to, int start, size_t at) {
    stack.push_back(start);
    while (!stack.empty()) {
      const int pc = stack.back();
      stack.pop_back();
      if (seen.contains(pc)) continue;
      seen.insert(pc);
      const Inst& i = prog_[static_cast<size_t>(pc)];
      switch (i.op) {
        case Inst::kJmp:
          stack.push_back(i.x);
          break;
        case Inst::kSplit:
          stack.push_back(i.y);
          stack.push_back(i.x);
          break;
        case Inst::kBegin:
          if (at == 0) stack.push_back(pc + 1);
          break;
        case Inst::kEnd:
          if (at == s.size()) stack.push_back(pc + 1);
          break;
        case Inst::kByte:
        case Inst::kMatch:
          to.insert(pc);
          break;
      }
    }
  };
  add(cur, 0, 0);
  for (size_t at = 0; at < s.size() && cur.n > 0; ++at) {
    next.n = 0;
    seen.n = 0;
    const auto byte = static_cast<unsigned char>(s[at]);
    for (size_t k = 0; k < cur.n; ++k) {
      const Inst& i = prog_[static_cast<size_t>(cur.dense[k])];
      if (i.op == Inst::kByte && i.set.test(byte)) add(next, cur.dense[k] + 1, at + 1);
    }
    std::swap(cur, next);
  }
  for (size_t k = 0; k < cur.n; ++k) {
    if (prog_[static_cast<size_t>(cur.dense[k])].op == Inst::kMatch) return true;
  }
  return false;
}

SuffixPatterns::SuffixPatterns(const std::vector<std::string>& keys, const std::string& file)
    : file_(file) {
  regexes_.reserve(keys.size());
  for (const auto& key : keys) regexes_.emplace_back(key, file);
}

std::optional<size_t> SuffixPatterns::match(const std::string& module) const {
  if (module.size() > kMaxModuleNameLength) {
    throw Error(file_, module.substr(0, 40) + "...", "module name too long to match patterns");
  }
  for (size_t i = 0; i < regexes_.size(); ++i) {
    if (regexes_[i].full_match(module)) return i;
  }
  return std::nullopt;
}

}  // namespace hydraopt::io
