package protocol

import (
	"errors"
	"fmt"
	"strings"
)

// ErrEmptyCommand is returned by SplitCommand for a command with no words.
var ErrEmptyCommand = errors.New("empty command")

// SplitCommand splits a command into words with a subset of POSIX shell
// quoting: white space separates words; 'single quotes' keep everything
// literally; "double quotes" keep everything but \ before one of \ " $ `;
// a backslash outside quotes escapes the next character. Nothing is
// expanded: no variables, globs or redirections.
func SplitCommand(s string) ([]string, error) {
	var (
		words  []string
		cur    strings.Builder
		inWord bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isSpace(c):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				if s[i] != '\n' { // backslash-newline joins lines
					cur.WriteByte(s[i])
				}
			}
		case c == '\'':
			inWord = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("split command: unterminated single quote at offset %d", i)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			inWord = true
			closed := false
			for i++; i < len(s); i++ {
				d := s[i]
				if d == '"' {
					closed = true
					break
				}
				if d == '\\' && i+1 < len(s) && strings.IndexByte("\\\"$`", s[i+1]) >= 0 {
					i++
					d = s[i]
				}
				cur.WriteByte(d)
			}
			if !closed {
				return nil, fmt.Errorf("split command: unterminated double quote")
			}
		default:
			inWord = true
			cur.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, ErrEmptyCommand
	}
	return words, nil
}
