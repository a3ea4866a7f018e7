// Gradient through a ReLU: one invocation per element of a chunk of `total` elements,
// `output[i] = grad[i]` where the ReLU's output `activation[i]` is positive, else 0 (Caffe's
// ReLU backward). Bindings: windows of three tensors of one shape, the chunk's first element at
// `grad_base`, `act_base` and `out_base`.

struct Params {
    total: u32, grad_base: u32, act_base: u32, out_base: u32,
}

fn element_count() -> u32 {
    return p.total;
}

fn element(i: u32) {
    output[p.out_base + i] = select(0.0, grad[p.grad_base + i], activation[p.act_base + i] > 0.0);
}
