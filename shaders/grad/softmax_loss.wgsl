// Softmax cross-entropy per pixel (Caffe's SoftmaxWithLoss, normalisation VALID): one
// invocation per pixel of `images` NCHW score maps of `channels` classes. With probabilities
// q = softmax(scores) and label l, the pixel's loss is -log(max(q[l], FLT_MIN)) and the
// gradient of the mean loss is (q - onehot(l)) * scale, `scale` = 1 / (non-ignored pixels of
// the batch); a pixel labelled `ignore` has loss 0 and gradient 0. `loss[i]` gets the pixel's
// loss (unscaled), summed on the host.

struct Params {
    channels: u32, plane: u32, total: u32, ignore: u32,
    scale: f32, pad0: u32, pad1: u32, pad2: u32,
}

fn element_count() -> u32 {
    return p.total;
}

fn element(i: u32) {
    let first = (i / p.plane) * p.channels * p.plane + i % p.plane;
    let l = labels[i];
    if (l == p.ignore) {
        for (var k = 0u; k < p.channels; k++) {
            output[first + k * p.plane] = 0.0;
        }
        loss[i] = 0.0;
        return;
    }
    var m = input[first];
    for (var k = 1u; k < p.channels; k++) {
        m = max(m, input[first + k * p.plane]);
    }
    var sum = 0.0;
    for (var k = 0u; k < p.channels; k++) {
        sum += exp(input[first + k * p.plane] - m);
    }
    for (var k = 0u; k < p.channels; k++) {
        let q = exp(input[first + k * p.plane] - m) / sum;
        output[first + k * p.plane] = (q - select(0.0, 1.0, k == l)) * p.scale;
    }
    let ql = exp(input[first + l * p.plane] - m) / sum;
    loss[i] = -log(max(ql, 1.17549435e-38));
}
