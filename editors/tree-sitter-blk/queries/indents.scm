; Statements inside braces are indented one level.
(body) @indent
"}" @outdent
