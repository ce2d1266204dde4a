; A block, a section and a layer override fold.
(body) @fold
