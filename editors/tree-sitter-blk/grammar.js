/**
 * @file The blkc block language (`.blk`) for tree-sitter: highlighting,
 * folding and indentation in Neovim, Helix and other tree-sitter editors.
 *
 * The language is `grammar/blk.pest`'s, rule for rule; a test
 * (`tests/agree.rs`) holds the two to the same verdict on every `.blk` file
 * of the repository and on random edits of them. There are no reserved
 * words: `layer`, `param`, the flags and the section kinds are keywords only
 * where a statement or an item can start with them, and names elsewhere (a
 * gain may use the variable `layer`; a setting may be called `model`).
 */

/// Binding powers, loosest first (as the Pratt parser of
/// `compiler/src/syntax/parse.rs`: `-a^b` is `-(a^b)`).
const PREC = { add: 1, mul: 2, neg: 3, pow: 4 };

/** `rule`, then any number of `, rule`. */
function commaSep1(rule) {
  return seq(rule, repeat(seq(',', rule)));
}

module.exports = grammar({
  name: 'blk',

  extras: $ => [/\s/, $.comment],

  word: $ => $.identifier,

  conflicts: $ => [
    // After a param's value, `trainable` (or `fixed`, `per_head`) is its
    // flag, or the name of the next statement when `=` follows.
    [$.param],
  ],

  rules: {
    source_file: $ => repeat($._item),

    _item: $ => choice($.use, $.block, $.section),

    /// `use "other.blk"`.
    use: $ => seq('use', field('path', $.string)),

    /// `block NAME { … }`.
    block: $ => seq('block', field('name', $.identifier), field('body', $.body)),

    /// `attention|mlp|model|train [NAME] { … }`.
    section: $ => seq(
      field('kind', $.section_kind),
      optional(field('name', $.identifier)),
      field('body', $.body),
    ),

    section_kind: _ => choice('attention', 'mlp', 'model', 'train'),

    body: $ => seq('{', repeat($._statement), '}'),

    _statement: $ => choice($.layer_override, $.param, $.assignment),

    /// `param NAME = EXPR [trainable] [fixed] [per_head]`.
    param: $ => seq(
      'param',
      field('name', $._name),
      '=',
      field('value', $._expression),
      repeat(field('flag', $.flag)),
    ),

    flag: _ => choice('trainable', 'fixed', 'per_head'),

    /// `layer first|last|N|A..B[ step S][, …] { … }`.
    layer_override: $ => seq(
      'layer',
      commaSep1(field('layers', choice($.layer_range, $.layer_selector))),
      field('body', $.body),
    ),

    layer_selector: $ => choice('first', 'last', $.integer),

    /// `A..B`, bounds of whole numbers and `depth`; `step S`: every S-th.
    layer_range: $ => seq(
      field('start', $._bound),
      '..',
      field('end', $._bound),
      optional(seq('step', field('step', $.integer))),
    ),

    _bound: $ => choice(
      $.integer,
      alias('depth', $.identifier),
      alias($.bound_binary, $.binary_expression),
      alias($.bound_parenthesized, $.parenthesized_expression),
    ),

    bound_binary: $ => choice(
      ...[['+', PREC.add], ['-', PREC.add], ['*', PREC.mul], ['/', PREC.mul]].map(([op, p]) =>
        prec.left(p, seq(field('left', $._bound), field('operator', op), field('right', $._bound)))),
    ),

    bound_parenthesized: $ => seq('(', $._bound, ')'),

    /// `NAME = EXPR`.
    assignment: $ => seq(field('name', $._name), '=', field('value', $._expression)),

    /// A name, where a statement may also start with a keyword spelled
    /// the same way.
    _name: $ => choice(
      $.identifier,
      alias(choice('layer', 'param', 'trainable', 'fixed', 'per_head'), $.identifier),
    ),

    _expression: $ => choice(
      $.call,
      $.number,
      $.string,
      $.identifier,
      $.parenthesized_expression,
      $.unary_expression,
      $.binary_expression,
    ),

    parenthesized_expression: $ => seq('(', $._expression, ')'),

    unary_expression: $ => prec(PREC.neg, seq(field('operator', '-'), field('operand', $._expression))),

    binary_expression: $ => choice(
      ...[['+', PREC.add], ['-', PREC.add], ['*', PREC.mul], ['/', PREC.mul]].map(([op, p]) =>
        prec.left(p, seq(field('left', $._expression), field('operator', op), field('right', $._expression)))),
      prec.right(PREC.pow, seq(field('left', $._expression), field('operator', '^'), field('right', $._expression))),
    ),

    /// `NAME(ARG, …)`, a trailing comma allowed.
    call: $ => seq(
      field('function', $.identifier),
      '(',
      optional(seq(commaSep1(field('argument', choice($.named_argument, $._expression))), optional(','))),
      ')',
    ),

    named_argument: $ => seq(field('name', $.identifier), '=', field('value', $._expression)),

    identifier: _ => /[A-Za-z_][A-Za-z0-9_]*/,

    integer: _ => /[0-9]+/,

    number: _ => /([0-9][0-9_]*(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?/,

    string: _ => token(seq('"', repeat(choice(/[^"\\\n]/, /\\["\\]/)), '"')),

    comment: _ => token(seq('#', /[^\n]*/)),
  },
});
