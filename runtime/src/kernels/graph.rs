//! Recording a kernel as one node of burn's autodiff graph, and handing a
//! parent's gradient to the kernel that adds into it. Every family's
//! `autodiff.rs` uses these.

/// Records `y`, computed from the tensors of `nodes`, as one node of `op`
/// in the graph (with `state` for its backward when a parent is tracked);
/// `C` is the checkpoint strategy of the impl it is used in.
macro_rules! record {
    ($op:expr, $nodes:expr, $state:expr, $y:expr) => {
        match $op.prepare::<C>($nodes).compute_bound().stateful() {
            ::burn::backend::autodiff::ops::OpsKind::Tracked(prep) => prep.finish($state, $y),
            ::burn::backend::autodiff::ops::OpsKind::UnTracked(prep) => prep.finish($y),
        }
    };
}
pub(crate) use record;

/// Takes the gradient registered so far for the parent `node` (an
/// `Option`: `None` for an untracked one) out of `grads` (`None` if there
/// is none), so that a kernel adds the new one
/// into it — one pass fewer than the addition `Gradients::register` makes.
///
/// Relies on burn-autodiff 0.21: `Gradients::remove` takes a tensor but
/// reads only its node's id, so the key is an untracked tensor (`like`,
/// any tensor) given the parent's node. (A macro: the node's type,
/// `NodeRef`, is not exported.) `a_gradient_is_taken_by_its_node_alone`
/// fails if a burn version changes that.
macro_rules! take_grad {
    ($B:ty, $grads:expr, $parent:expr, $like:expr) => {{
        match $parent {
            Some(node) => {
                let mut key =
                    <::burn::backend::Autodiff<$B> as ::burn::tensor::backend::AutodiffBackend>::from_inner($like);
                key.node = node.clone();
                $grads.remove::<$B>(&key)
            }
            None => None,
        }
    }};
}
pub(crate) use take_grad;

/// Registers each gradient of `values` for the parent beside it in
/// `parents`, skipping untracked ones.
macro_rules! register_all {
    ($B:ty, $grads:expr, $parents:expr, $values:expr) => {
        for (parent, value) in $parents.into_iter().zip($values) {
            if let Some(node) = parent {
                $grads.register::<$B>(node.id, value);
            }
        }
    };
}
pub(crate) use register_all;

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::Tensor;

    use crate::backend::Cpu;
    use crate::kernels::tensor::primitive;

    /// The gradient registered for a tracked tensor comes out of burn's
    /// `Gradients` by a key that shares only its node, and is gone after.
    #[test]
    fn a_gradient_is_taken_by_its_node_alone() {
        let d = Default::default();
        let x = Tensor::<Autodiff<Cpu>, 1>::from_floats([1.0, 2.0, 3.0], &d).require_grad();
        let mut grads = (x.clone() * 2.5).sum().backward();
        let node = primitive(x.clone()).node.clone();
        let like = primitive(Tensor::<Cpu, 1>::zeros([3], &d));
        let taken = take_grad!(Cpu, grads, Some(&node), like).expect("the registered gradient");
        crate::kernels::tensor::tensor::<Cpu, 1>(taken).into_data().assert_eq(&[2.5f32, 2.5, 2.5].into(), false);
        assert!(x.grad(&grads).is_none(), "taken out, not copied");
    }
}
