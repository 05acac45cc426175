package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// The man page and the shell completions are made from the command line's
// own definition, so they cannot drift from it.

func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the qcowmount(1) man page (roff)",
		Hidden: true,
		Action: func(c *cli.Context) error {
			page, err := c.App.ToManWithSection(1)
			if err != nil {
				return err
			}
			fmt.Print(page)
			return nil
		},
	}
}

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a completion script for bash, zsh or fish",
		ArgsUsage: "bash|zsh|fish",
		Action: func(c *cli.Context) error {
			switch shell := c.Args().First(); shell {
			case "bash":
				fmt.Print(bashCompletion(c.App))
			case "zsh":
				// zsh runs the bash script through its bashcompinit.
				fmt.Print("#compdef qcowmount\nautoload -U bashcompinit && bashcompinit\n" + bashCompletion(c.App))
			case "fish":
				script, err := c.App.ToFishCompletion()
				if err != nil {
					return err
				}
				fmt.Print(script)
			default:
				return usageError{fmt.Errorf("completion for %q: bash, zsh or fish", shell)}
			}
			return nil
		},
	}
}

// flagWords lists flags as typed: --name for long names, -n for short.
func flagWords(flags []cli.Flag) string {
	var words []string
	for _, f := range flags {
		for _, n := range f.Names() {
			if len(n) == 1 {
				words = append(words, "-"+n)
			} else {
				words = append(words, "--"+n)
			}
		}
	}
	slices.Sort(words)
	return strings.Join(words, " ")
}

// bashCompletion completes commands, then the flags of the command being
// typed, and file names everywhere else.
func bashCompletion(app *cli.App) string {
	var b strings.Builder
	var commands []string
	b.WriteString("# bash completion for qcowmount, made by `qcowmount completion bash`\n")
	b.WriteString("_qcowmount() {\n\tlocal cur=${COMP_WORDS[COMP_CWORD]} cmd=${COMP_WORDS[1]} words\n\tcase $cmd in\n")
	for _, c := range app.Commands {
		if c.Hidden {
			continue
		}
		commands = append(commands, c.Names()...)
		fmt.Fprintf(&b, "\t%s) words=%q ;;\n", strings.Join(c.Names(), "|"), flagWords(c.Flags))
	}
	fmt.Fprintf(&b, "\t*) words=%q ;;\n\tesac\n", flagWords(app.Flags))
	fmt.Fprintf(&b, "\tif [[ $COMP_CWORD -eq 1 && $cur != -* ]]; then\n\t\tCOMPREPLY=($(compgen -W %q -- \"$cur\") $(compgen -f -- \"$cur\"))\n", strings.Join(commands, " "))
	b.WriteString("\telif [[ $cur == -* ]]; then\n\t\tCOMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n")
	b.WriteString("\telse\n\t\tCOMPREPLY=($(compgen -f -- \"$cur\"))\n\tfi\n}\ncomplete -o filenames -F _qcowmount qcowmount\n")
	return b.String()
}
