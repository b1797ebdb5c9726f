//! PATHPATTERN matching, as the TUF specification says (section 4.5,
//! `paths`): "the Unix shell pattern matching convention for paths
//! (glob(7))", where "a path separator in a path SHOULD NOT be matched by a
//! wildcard".
//!
//! That is fnmatch(3) with `FNM_PATHNAME` and without `FNM_PERIOD`: the
//! pattern and the path are split at `/` and must have as many segments;
//! within a segment `*` matches any run of characters, `?` any one
//! character, `[...]` one character of a set (`[!...]` of its complement,
//! `a-z` ranges, a leading `]` taken literally), and `\` makes the next
//! character literal. Matching is case-sensitive. No wildcard or bracket
//! expression ever matches `/`.

/// Whether target path `path` matches PATHPATTERN `pattern`.
pub(crate) fn matches(pattern: &str, path: &str) -> bool {
    let mut patterns = pattern.split('/');
    let mut segments = path.split('/');
    loop {
        match (patterns.next(), segments.next()) {
            (None, None) => return true,
            (Some(pattern), Some(segment)) => {
                let tokens = tokens(pattern);
                let chars: Vec<char> = segment.chars().collect();
                if !matches_segment(&tokens, &chars) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
    Set { negated: bool, ranges: Vec<(char, char)> },
}

impl Token {
    /// Whether the token (not `AnyRun`) matches one character.
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Literal(literal) => *literal == c,
            Token::AnyOne => true,
            Token::AnyRun => false,
            Token::Set { negated, ranges } => ranges.iter().any(|(low, high)| (*low..=*high).contains(&c)) != *negated,
        }
    }
}

fn tokens(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::with_capacity(chars.len());
    let mut idx = 0;
    while idx < chars.len() {
        match chars[idx] {
            '*' => {
                // `**` is `*`: runs of stars match what one star matches.
                if tokens.last() != Some(&Token::AnyRun) {
                    tokens.push(Token::AnyRun);
                }
                idx += 1;
            }
            '?' => {
                tokens.push(Token::AnyOne);
                idx += 1;
            }
            '\\' if idx + 1 < chars.len() => {
                tokens.push(Token::Literal(chars[idx + 1]));
                idx += 2;
            }
            '[' => match bracket(&chars, idx) {
                Some((token, next)) => {
                    tokens.push(token);
                    idx = next;
                }
                // An unclosed `[` is an ordinary character.
                None => {
                    tokens.push(Token::Literal('['));
                    idx += 1;
                }
            },
            c => {
                tokens.push(Token::Literal(c));
                idx += 1;
            }
        }
    }
    tokens
}

/// The bracket expression opening at `chars[open]`, and the index after
/// its `]`; `None` if it is not closed.
fn bracket(chars: &[char], open: usize) -> Option<(Token, usize)> {
    let mut idx = open + 1;
    let negated = chars.get(idx) == Some(&'!');
    if negated {
        idx += 1;
    }
    let mut ranges = Vec::new();
    let first = idx;
    loop {
        let c = *chars.get(idx)?;
        if c == ']' && idx > first {
            return Some((Token::Set { negated, ranges }, idx + 1));
        }
        let low = if c == '\\' {
            idx += 1;
            *chars.get(idx)?
        } else {
            c
        };
        idx += 1;
        // `a-z`, but a `-` before the closing `]` is literal.
        if chars.get(idx) == Some(&'-') && chars.get(idx + 1).is_some_and(|next| *next != ']') {
            let mut high = chars[idx + 1];
            idx += 2;
            if high == '\\' {
                high = *chars.get(idx)?;
                idx += 1;
            }
            ranges.push((low, high));
        } else {
            ranges.push((low, low));
        }
    }
}

/// Matches one segment; `AnyRun` backtracks to the last star only, which
/// is complete for patterns whose other tokens each match one character.
fn matches_segment(tokens: &[Token], chars: &[char]) -> bool {
    let (mut t, mut c) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while c < chars.len() {
        if t < tokens.len() && tokens[t] == Token::AnyRun {
            star = Some((t, c));
            t += 1;
        } else if t < tokens.len() && tokens[t].matches(chars[c]) {
            t += 1;
            c += 1;
        } else if let Some((star_t, star_c)) = star {
            t = star_t + 1;
            c = star_c + 1;
            star = Some((star_t, c));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|token| *token == Token::AnyRun)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn the_specification_examples() {
        assert!(matches("targets/*.tgz", "targets/foo.tgz"));
        assert!(matches("targets/*.tgz", "targets/bar.tgz"));
        assert!(!matches("targets/*.tgz", "targets/foo.txt"));
        assert!(matches("foo-version-?.tgz", "foo-version-2.tgz"));
        assert!(matches("foo-version-?.tgz", "foo-version-a.tgz"));
        assert!(!matches("foo-version-?.tgz", "foo-version-alpha.tgz"));
        assert!(matches("*.tgz", "foo.tgz"));
        assert!(matches("*.tgz", "bar.tgz"));
        assert!(!matches("*.tgz", "targets/foo.tgz"));
        assert!(matches("foo.tgz", "foo.tgz"));
        assert!(!matches("foo.tgz", "foo.tgzz"));
    }

    /// The two escapes issue 14 found in tough: a wildcard must not cross
    /// `/`.
    #[test]
    fn no_wildcard_crosses_a_separator() {
        assert!(!matches("*.md", "releases/README.md"));
        assert!(matches("*.md", "README.md"));
        assert!(!matches("apps/*", "apps/x/firmware.bin"));
        assert!(matches("apps/*", "apps/firmware.bin"));
        assert!(!matches("apps/*", "apps"));
        assert!(matches("apps/*", "apps/"), "a star matches the empty run");
        assert!(!matches("a?b", "a/b"));
        assert!(!matches("a[/]b", "a/b"));
        assert!(!matches("a[!x]b", "a/b"));
        assert!(matches("releases/*/*", "releases/x/x_v1"));
        assert!(!matches("releases/*/*", "releases/x/y/z"));
        assert!(matches("*/*", "a/b"));
        assert!(!matches("*", "a/b"));
        assert!(!matches("**", "a/b"), "** is * for a path segment");
    }

    #[test]
    fn sets_escapes_and_case() {
        assert!(matches("v[0-9].bin", "v7.bin"));
        assert!(!matches("v[0-9].bin", "vx.bin"));
        assert!(matches("v[!0-9].bin", "vx.bin"));
        assert!(!matches("v[!0-9].bin", "v1.bin"));
        assert!(matches("[]]", "]"));
        assert!(matches("[a-]", "-"));
        assert!(matches("[", "["), "an unclosed bracket is literal");
        assert!(matches("a\\*b", "a*b"));
        assert!(!matches("a\\*b", "axb"));
        assert!(!matches("README.md", "README.MD"));
        assert!(!matches("*.md", "README.MD"));
        assert!(matches("*a*b*c", "xxaybzzc"));
        assert!(!matches("*a*b*c", "xxaybzz"));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
        assert!(matches("é?", "éü"));
    }
}
