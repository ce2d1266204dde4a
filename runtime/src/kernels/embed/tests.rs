//! The embedding against burn's `select`, and the CPU kernels against the
//! reference maths.

use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{Int, Tensor};

use super::{reference, EmbedOps};
use crate::kernels::testing::*;
use crate::kernels::*;

/// The embedding kernel is burn's `select` plus the positions, value and
/// gradients of the table (a token repeated) and of the positions.
#[test]
fn embed_matches_select_and_add() {
    let device = Default::default();
    let (table, pos) = (random([11, 6]), random([4, 6]));
    let tokens = Tensor::<Ad, 1, burn::tensor::Int>::from_ints([3, 0, 10, 3, 7, 7, 2, 3], &device);
    let ours = embed(table.clone(), tokens.clone(), Some(pos.clone()));
    let theirs =
        (table.clone().select(0, tokens.clone()).reshape([2, 4, 6]) + pos.clone().unsqueeze::<3>()).reshape([8, 6]);
    same_gradients(&[table.clone(), pos], ours, theirs);
    let ours = embed(table.clone(), tokens.clone(), None);
    same_gradients(std::slice::from_ref(&table), ours, table.clone().select(0, tokens));
}

/// The CPU's embedding and its gradients (added into the table's from
/// elsewhere too) against the reference.
#[test]
fn the_cpu_kernels_equal_the_reference() {
    let (d, x) = (Default::default(), r([9, 24]));
    // The embedding and its gradients.
    let tokens = Tensor::<C, 1, Int>::from_ints([3, 0, 8, 5, 5, 1], &d).into_primitive();
    let pos = C::float_reshape(r([1, 72]), [3, 24].into());
    let e1 = C::embed(x.clone(), tokens.clone(), Some(pos.clone()));
    same(e1, reference::embed::<C>(x.clone(), tokens.clone(), Some(pos)));
    let dy6 = C::float_reshape(r([6, 24]), [6, 24].into());
    let (t1, p1) = C::embed_backward(dy6.clone(), tokens.clone(), None, 9, Some(3), None);
    let (t2, p2) = reference::embed_backward::<C>(dy6.clone(), tokens.clone(), 9, Some(3), None);
    same(t1, t2);
    same(p1.expect("positions"), p2.expect("positions"));
    // Added into the table's gradient from elsewhere.
    let acc = r([9, 24]);
    let (t3, _) = C::embed_backward(dy6.clone(), tokens.clone(), None, 9, None, Some(acc.clone()));
    let (t4, _) = reference::embed_backward::<C>(dy6, tokens, 9, None, None);
    same(t3, C::float_add(t4, acc));
}

/// The tokens grouped for a GPU's backward: the rows in token order (each
/// token's in their own order), where each group starts, then the tokens;
/// tokens outside the vocabulary count as its nearest end.
#[test]
fn tokens_are_grouped_stably_by_token() {
    let d = Default::default();
    let tokens = Tensor::<C, 1, Int>::from_ints([3, 0, 8, 5, 5, 1, 3, 12, -2, 3], &d).into_primitive();
    let g = super::groups::<C>(&tokens, 9);
    let got: Vec<i64> = Tensor::<C, 1, Int>::from_primitive(g).into_data().iter::<i64>().collect();
    // Tokens as read: 3 0 8 5 5 1 3 8 0 3.
    let order = [1, 8, 5, 0, 6, 9, 3, 4, 2, 7];
    let starts = [0, 2, 3, 6, 8, 10];
    let ids = [0, 1, 3, 5, 8];
    let want: Vec<i64> = order.iter().chain(&starts).chain(&ids).map(|&x| x as i64).collect();
    assert_eq!(got, want);
    // No tokens: the end alone.
    let none = Tensor::<C, 1, Int>::from_ints([0i32; 0], &d).into_primitive();
    let got: Vec<i64> =
        Tensor::<C, 1, Int>::from_primitive(super::groups::<C>(&none, 9)).into_data().iter::<i64>().collect();
    assert_eq!(got, vec![0]);
}
