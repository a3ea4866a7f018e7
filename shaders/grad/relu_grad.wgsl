// Gradient through a ReLU: one invocation per element, `output[i] = grad[i]` where the ReLU's
// output `activation[i]` is positive, else 0 (Caffe's ReLU backward).

struct Params {
    total: u32, pad0: u32, pad1: u32, pad2: u32,
}

fn element_count() -> u32 {
    return p.total;
}

fn element(i: u32) {
    output[i] = select(0.0, grad[i], activation[i] > 0.0);
}
