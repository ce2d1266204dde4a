; Highlighting of .blk files (capture names as Neovim and Helix use them).

(comment) @comment
(string) @string
(number) @number
(integer) @number

["use" "block" "param" "layer" "step"] @keyword
(section_kind) @keyword
(flag) @keyword.modifier
(layer_selector ["first" "last"] @constant.builtin)

(block name: (identifier) @type)
(section name: (identifier) @type)
(param name: (identifier) @variable.parameter)
(assignment name: (identifier) @variable)
(call function: (identifier) @function.call)
(named_argument name: (identifier) @property)

; The block's input and output, and the names every gain can use.
((identifier) @variable.builtin
  (#any-of? @variable.builtin "x" "out" "depth" "layer"))

["=" "+" "-" "*" "/" "^" ".."] @operator
["(" ")" "{" "}"] @punctuation.bracket
"," @punctuation.delimiter
