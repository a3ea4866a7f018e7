// Caffe's SGD step with momentum on one parameter buffer, one invocation per element:
//   v = momentum * v + rate * (grad + decay * w);  w = w - v
// where `rate` = lr * lr_mult and `decay` = weight_decay * decay_mult.

struct Params {
    total: u32, momentum: f32, rate: f32, decay: f32,
}

fn element_count() -> u32 {
    return p.total;
}

fn element(i: u32) {
    let v = p.momentum * velocity[i] + p.rate * (grad[i] + p.decay * param[i]);
    velocity[i] = v;
    param[i] = param[i] - v;
}
