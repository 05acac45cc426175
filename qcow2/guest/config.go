package guest

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// LVM's metadata is text in its configuration syntax:
//
//	vg0 {
//		extent_size = 8192	# sectors
//		physical_volumes { pv0 { id = "..." pe_start = 2048 } }
//		logical_volumes { root { status = ["READ", "VISIBLE"] segment1 { ... } } }
//	}
//
// Values are numbers, strings, or lists of them. The parser bounds what a
// hostile text can cost: nesting depth and the number of items.
const (
	maxConfigDepth = 16
	maxConfigItems = 1 << 20
)

type section struct {
	name     string
	values   map[string]any // int64, string, or []any of those
	sections []*section
}

func (s *section) child(name string) *section {
	for _, c := range s.sections {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (s *section) int(key string) int64 {
	v, _ := s.values[key].(int64)
	return v
}

func (s *section) str(key string) string {
	v, _ := s.values[key].(string)
	return v
}

func (s *section) list(key string) []any {
	v, _ := s.values[key].([]any)
	return v
}

func (s *section) hasFlag(key, flag string) bool {
	return slices.Contains(s.list(key), any(flag))
}

// configParser reads the text token by token.
type configParser struct {
	text  string
	pos   int
	items int
}

func parseConfig(text string) (*section, error) {
	p := &configParser{text: text}
	root := &section{values: map[string]any{}}
	if err := p.body(root, 0); err != nil {
		return nil, err
	}
	if tok := p.next(); tok != "" {
		return nil, p.errorf("unexpected %q", tok)
	}
	return root, nil
}

func (p *configParser) errorf(format string, args ...any) error {
	line := 1 + strings.Count(p.text[:p.pos], "\n")
	return fmt.Errorf("metadata line %d: %s", line, fmt.Sprintf(format, args...))
}

// body reads `name = value` and `name { ... }` items until a closing
// brace (left for the caller) or the end.
func (p *configParser) body(s *section, depth int) error {
	if depth > maxConfigDepth {
		return p.errorf("sections nested deeper than %d", maxConfigDepth)
	}
	for {
		save := p.pos
		name := p.next()
		if name == "" || name == "}" {
			p.pos = save
			return nil
		}
		if p.items++; p.items > maxConfigItems {
			return p.errorf("more than %d items", maxConfigItems)
		}
		if !isIdent(name) {
			return p.errorf("unexpected %q", name)
		}
		switch tok := p.next(); tok {
		case "{":
			c := &section{name: name, values: map[string]any{}}
			if err := p.body(c, depth+1); err != nil {
				return err
			}
			if p.next() != "}" {
				return p.errorf("section %s is not closed", name)
			}
			s.sections = append(s.sections, c)
		case "=":
			v, err := p.value(true)
			if err != nil {
				return err
			}
			s.values[name] = v
		default:
			return p.errorf("expected = or { after %s, found %q", name, tok)
		}
	}
}

// value reads a number, a string, or (where lists are allowed) a list.
func (p *configParser) value(listOK bool) (any, error) {
	tok := p.next()
	switch {
	case tok == "[" && listOK:
		var list []any
		for {
			save := p.pos
			if p.next() == "]" {
				return list, nil
			}
			p.pos = save
			if p.items++; p.items > maxConfigItems {
				return nil, p.errorf("more than %d items", maxConfigItems)
			}
			v, err := p.value(false)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
			switch sep := p.next(); sep {
			case ",":
			case "]":
				return list, nil
			default:
				return nil, p.errorf("expected , or ] in a list, found %q", sep)
			}
		}
	case strings.HasPrefix(tok, `"`):
		return unquote(tok), nil
	default:
		if n, err := strconv.ParseInt(tok, 10, 64); err == nil {
			return n, nil
		}
		if f, err := strconv.ParseFloat(tok, 64); err == nil {
			return f, nil
		}
		return nil, p.errorf("bad value %q", tok)
	}
}

// next returns the next token ("" at the end), skipping space and
// comments: a quoted string (with its quotes), one of = { } [ ] ,, or a
// run of other characters.
func (p *configParser) next() string {
	for p.pos < len(p.text) {
		c := p.text[p.pos]
		switch {
		case c == '#':
			for p.pos < len(p.text) && p.text[p.pos] != '\n' {
				p.pos++
			}
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			p.pos++
		case c == '"':
			start := p.pos
			for p.pos++; p.pos < len(p.text) && p.text[p.pos] != '"'; p.pos++ {
				if p.text[p.pos] == '\\' {
					p.pos++
				}
			}
			p.pos = min(p.pos+1, len(p.text))
			return p.text[start:p.pos]
		case strings.IndexByte("={}[],", c) >= 0:
			p.pos++
			return string(c)
		default:
			start := p.pos
			for p.pos < len(p.text) && strings.IndexByte("={}[],\"# \t\r\n", p.text[p.pos]) < 0 {
				p.pos++
			}
			return p.text[start:p.pos]
		}
	}
	return ""
}

func isIdent(s string) bool {
	for _, c := range s {
		if !(c == '_' || c == '-' || c == '.' || c == '+' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return s != ""
}

// unquote strips the quotes of a token and LVM's backslash escapes.
func unquote(tok string) string {
	s := strings.TrimPrefix(tok, `"`)
	s = strings.TrimSuffix(s, `"`)
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
