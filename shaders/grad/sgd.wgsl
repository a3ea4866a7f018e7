// Caffe's SGD step with momentum on a chunk of `total` elements of one parameter buffer, one
// invocation per element:
//   v = momentum * v + rate * (grad + decay * w);  w = w - v
// where `rate` = lr * lr_mult and `decay` = weight_decay * decay_mult. Bindings: windows of the
// gradient, the momentum and the parameters, the chunk's first element at `grad_base`,
// `v_base` and `param_base`.

struct Params {
    total: u32, momentum: f32, rate: f32, decay: f32,
    grad_base: u32, v_base: u32, param_base: u32, pad0: u32,
}

fn element_count() -> u32 {
    return p.total;
}

fn element(i: u32) {
    let w = param[p.param_base + i];
    let v = p.momentum * velocity[p.v_base + i] + p.rate * (grad[p.grad_base + i] + p.decay * w);
    velocity[p.v_base + i] = v;
    param[p.param_base + i] = w - v;
}
