//! burn's CubeCL backends with operation fusion (`Fusion<CubeBackend>`,
//! which `burn::backend::Cuda` and `Wgpu` are with the `fusion` feature).
//!
//! burn's fusion backend records operations in streams and compiles runs of
//! element-wise ones (and matrix products with their epilogues) into
//! single kernels; an operation it does not know ends a run. blkc's
//! kernels enter those streams as custom operations (`CustomOpIr`): each
//! family's `fused.rs` declares the outputs (their shapes follow from the
//! operands' metadata, planned by the same function the kernel plans with)
//! and, when the stream runs, hands the operands to the family's kernel on
//! the `CubeBackend` inside. What a kernel does not take (another dtype, a
//! shape it does not plan) stays the family's reference maths, recorded
//! operation by operation, which fusion may fuse. The families fusion
//! already serves as well as a kernel (the gained sums, element-wise)
//! stay reference, as does the embedding's lookup (burn's `select`).

use std::collections::VecDeque;
use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::GainOps;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> GainOps for Fusion<CubeBackend<R, F, I, BT>> {}

/// What an operand slot holds.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Float,
    Int,
    /// An optional operand not given.
    Absent,
}

/// The operands of a custom operation, in the order its kernel takes them.
pub(super) struct Operands<B: FusionBackend> {
    tensors: Vec<FusionTensor<B::FusionRuntime>>,
    slots: Vec<Slot>,
}

impl<B: FusionBackend> Operands<B> {
    pub(super) fn new() -> Self {
        Operands { tensors: Vec::new(), slots: Vec::new() }
    }

    pub(super) fn float(mut self, t: FloatTensor<Fusion<B>>) -> Self {
        self.tensors.push(t);
        self.slots.push(Slot::Float);
        self
    }

    pub(super) fn floats(self, ts: impl IntoIterator<Item = FloatTensor<Fusion<B>>>) -> Self {
        ts.into_iter().fold(self, Self::float)
    }

    pub(super) fn maybe(mut self, t: Option<FloatTensor<Fusion<B>>>) -> Self {
        match t {
            Some(t) => self.float(t),
            None => {
                self.slots.push(Slot::Absent);
                self
            }
        }
    }

    pub(super) fn int(mut self, t: IntTensor<Fusion<B>>) -> Self {
        self.tensors.push(t);
        self.slots.push(Slot::Int);
        self
    }
}

/// One operand as the kernel receives it.
enum Item<B: Backend> {
    Float(FloatTensor<B>),
    Int(IntTensor<B>),
}

/// The operands as the kernel receives them, taken in the order given.
pub(super) struct Taken<B: Backend> {
    items: VecDeque<Option<Item<B>>>,
}

impl<B: Backend> Taken<B> {
    fn next(&mut self) -> Option<Item<B>> {
        self.items.pop_front().unwrap_or_else(|| unreachable!("a kernel takes no more operands than were given"))
    }

    pub(super) fn float(&mut self) -> FloatTensor<B> {
        match self.next() {
            Some(Item::Float(t)) => t,
            _ => unreachable!("the operand given here was a float tensor"),
        }
    }

    pub(super) fn floats<const N: usize>(&mut self) -> [FloatTensor<B>; N] {
        std::array::from_fn(|_| self.float())
    }

    pub(super) fn maybe(&mut self) -> Option<FloatTensor<B>> {
        match self.next() {
            Some(Item::Float(t)) => Some(t),
            None => None,
            Some(Item::Int(_)) => unreachable!("the operand given here was optional and float"),
        }
    }

    pub(super) fn int(&mut self) -> IntTensor<B> {
        match self.next() {
            Some(Item::Int(t)) => t,
            _ => unreachable!("the operand given here was an int tensor"),
        }
    }
}

/// An output of `shape` in f32 (what blkc's kernels write).
pub(super) fn f32s(shape: impl Into<Shape>) -> (Shape, DType) {
    (shape.into(), DType::F32)
}

/// An output shaped and typed as `t`.
pub(super) fn like<T: TensorMetadata>(t: &T) -> (Shape, DType) {
    (t.shape(), t.dtype())
}

/// A kernel of the inner backend, as a fusion stream runs it.
struct Custom<B: FusionBackend, K> {
    desc: CustomOpIr,
    slots: Vec<Slot>,
    kernel: K,
    _backend: PhantomData<fn() -> B>,
}

impl<B: FusionBackend, K> std::fmt::Debug for Custom<B, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custom").field("desc", &self.desc).finish()
    }
}

impl<B, K> Operation<B::FusionRuntime> for Custom<B, K>
where
    B: FusionBackend,
    K: Fn(Taken<B>) -> Vec<FloatTensor<B>> + Send + Sync,
{
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let mut inputs = self.desc.inputs.iter();
        let mut next = || inputs.next().unwrap_or_else(|| unreachable!("one input per operand given"));
        let items = self
            .slots
            .iter()
            .map(|slot| match slot {
                Slot::Float => Some(Item::Float(handles.get_float_tensor::<B>(next()))),
                Slot::Int => Some(Item::Int(handles.get_int_tensor::<B>(next()))),
                Slot::Absent => None,
            })
            .collect();
        let outputs = (self.kernel)(Taken { items });
        assert_eq!(outputs.len(), self.desc.outputs.len(), "blkc's `{}` made another count of outputs", self.desc.id);
        for (ir, t) in self.desc.outputs.iter().zip(outputs) {
            // The declared shape is what the streams after this one were
            // recorded with; a kernel that made another is a bug in its
            // `fused.rs`, never a user's input.
            assert!(
                t.shape() == ir.shape && t.dtype() == ir.dtype,
                "blkc's `{}` made a {:?} {:?} output where it declared {:?} {:?}",
                self.desc.id,
                t.dtype(),
                t.shape(),
                ir.dtype,
                ir.shape,
            );
            handles.register_float_tensor::<B>(&ir.id, t);
        }
    }
}

/// Records `kernel` on `operands` in their fusion stream, as the custom
/// operation `name` with `outputs` (shape and dtype each), and returns the
/// outputs, to be computed when the stream runs.
pub(super) fn run<B, K>(
    name: &'static str,
    operands: Operands<B>,
    outputs: Vec<(Shape, DType)>,
    kernel: K,
) -> Vec<FloatTensor<Fusion<B>>>
where
    B: FusionBackend,
    K: Fn(Taken<B>) -> Vec<FloatTensor<B>> + Send + Sync + 'static,
{
    let Operands { tensors, slots } = operands;
    let client =
        tensors.first().unwrap_or_else(|| unreachable!("every custom operation has an operand")).client.clone();
    let streams = OperationStreams::with_inputs(&tensors);
    let inputs: Vec<TensorIr> = tensors.into_iter().map(FusionTensor::into_ir).collect();
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
        .collect();
    let desc = CustomOpIr::new(name, &inputs, &outputs);
    let op = Custom::<B, K> { desc: desc.clone(), slots, kernel, _backend: PhantomData };
    client.register(streams, OperationIr::Custom(desc), op)
}

/// The `N` outputs of [`run`] as an array.
pub(super) fn outputs<T, const N: usize>(v: Vec<T>) -> [T; N] {
    v.try_into().unwrap_or_else(|_| unreachable!("run returns one tensor per declared output"))
}
