//! Faults: no adapter, a lost device and a wait that runs out return errors promptly (never a
//! hang or a panic), and the executor then runs the network on the CPU and says so.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{random4, rel_error, rng};
use dilated::gpu::context::DEFAULT_TIMEOUT;
use dilated::gpu::{GpuLayer, GpuMaxPool2d, GpuRelu, GpuSoftmax, GpuZoom};
use dilated::net::Network;
use dilated::plan::CpuPlan;
use dilated::plan::GpuPlan;
use dilated::plan::executor::{Executor, RanOn, RunOn};
use dilated::{Conv2d, Error, Gpu, GpuConv2d, GpuOptions, MaxPool2d, Shape, Zoom};

/// Runs `f` on its own thread and fails the test if it has not finished within `limit` (the
/// thread is left running: a hang cannot be interrupted). A panic in `f` fails the test with
/// `f`'s own message.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running after {limit:?}: a hang"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker ended without sending"),
        },
    }
}

/// What "promptly" means here: operations on a device already known to be lost must fail
/// within this (generous) bound, far below the wait timeout the tests give the device
/// ([`WAIT`]) and the default one ([`DEFAULT_TIMEOUT`], 600 s), so an operation that waited
/// for the device instead of failing at once cannot pass.
const PROMPT: Duration = Duration::from_secs(5);

/// The wait timeout the tests below set on their device: long enough that one wait running
/// out takes longer than [`PROMPT`], short enough that `within` still reports the result.
const WAIT: Duration = Duration::from_secs(30);

/// Fails unless `elapsed` is within [`PROMPT`], naming what was timed.
fn assert_prompt(elapsed: Duration, what: &str) {
    assert!(
        elapsed < PROMPT,
        "{what} took {elapsed:?}, more than {PROMPT:?} (device wait timeout {WAIT:?}, \
         default {DEFAULT_TIMEOUT:?}): an operation waited instead of failing at once"
    );
}

fn network() -> Network {
    Network::builder("small", 3)
        .conv_he("conv1", Conv2d::new(3, 8, 3).pad(1).with_relu(true), 1)
        .max_pool("pool1", MaxPool2d::caffe(2, 2))
        .conv_he("conv2", Conv2d::new(8, 4, 3).dilation(2).pad(2), 2)
        .softmax("prob")
        .build()
        .unwrap()
}

const SHAPE: Shape = Shape::new(1, 3, 16, 18);

fn device_error(what: &str, r: Result<impl Sized, Error>) {
    match r {
        Err(Error::Device(msg)) => eprintln!("{what}: {msg}"),
        Err(other) => panic!("{what}: expected a device error, got {other:?}"),
        Ok(_) => panic!("{what}: succeeded on a lost device"),
    }
}

#[test]
fn without_an_adapter_the_executor_runs_on_the_cpu() {
    let options = GpuOptions {
        adapter_name: Some("no adapter is called this".into()),
        ..Default::default()
    };
    let gpu = Gpu::with_options(&options);
    assert!(
        matches!(gpu, Err(Error::NoAdapter { .. })),
        "{:?}",
        gpu.err()
    );
    let net = network();
    let x = random4(&mut rng(1), SHAPE.dims());
    let want = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();

    let executor = Executor::gpu_or_cpu(&net, gpu.as_ref());
    assert_eq!(executor.run_on(), RunOn::GpuOrCpu);
    let run = executor.forward(x.view()).unwrap();
    assert_eq!(run.ran_on, RanOn::Cpu);
    let reason = run.fallback_reason.expect("the fallback says why");
    assert!(reason.contains("no adapter is called this"), "{reason}");
    assert_eq!(run.output, want, "the CPU result");

    // Asked for the CPU: no fallback to report.
    let run = Executor::cpu(&net).forward(x.view()).unwrap();
    assert_eq!((run.ran_on, run.fallback_reason), (RanOn::Cpu, None));
    assert_eq!(run.output, want);

    // Request errors are errors on every backend, not reasons to fall back.
    let wrong = random4(&mut rng(2), [1, 4, 16, 18]);
    assert!(matches!(
        executor.forward(wrong.view()),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn the_executor_prefers_the_gpu_and_reports_it() {
    let gpu = common::gpu();
    let net = network();
    let x = random4(&mut rng(3), SHAPE.dims());
    let want = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
    for executor in [
        Executor::gpu(&net, gpu),
        Executor::gpu_or_cpu(&net, Ok(gpu)),
    ] {
        for _ in 0..2 {
            let run = executor.forward(x.view()).unwrap();
            assert_eq!((run.ran_on, &run.fallback_reason), (RanOn::Gpu, &None));
            assert!(rel_error(run.output.view(), want.view()) < 1e-4);
        }
        // Another input shape compiles another plan.
        let y = random4(&mut rng(4), [1, 3, 13, 11]);
        let run = executor.forward(y.view()).unwrap();
        assert_eq!(run.ran_on, RanOn::Gpu);
        let want = CpuPlan::new(&net).unwrap().forward(y.view()).unwrap();
        assert!(rel_error(run.output.view(), want.view()) < 1e-4);
    }
}

#[test]
fn a_destroyed_device_fails_promptly_and_the_executor_falls_back() {
    within(Duration::from_secs(120), || {
        let mut gpu = Gpu::new().unwrap();
        gpu.set_timeout(Some(WAIT));
        let net = network();
        let x = random4(&mut rng(5), SHAPE.dims());
        let plan = GpuPlan::new(&gpu, &net, SHAPE).unwrap();
        let spec = Conv2d::new(3, 4, 3).pad(1);
        let w = random4(&mut rng(6), spec.weight_shape());
        let b = common::random1(&mut rng(7), 4);
        let conv = GpuConv2d::new(&gpu, spec, w.view(), Some(b.view())).unwrap();
        let t = gpu.upload(x.view()).unwrap();
        let before = plan.forward(x.view()).unwrap();
        assert!(!gpu.is_lost());

        gpu.device().destroy();
        let start = std::time::Instant::now();
        device_error("plan forward", plan.forward(x.view()));
        device_error("plan forward, profiled", plan.forward_profiled(x.view()));
        assert!(gpu.is_lost(), "the lost callback ran");
        assert!(gpu.lost_reason().is_some());
        device_error("new plan", GpuPlan::new(&gpu, &net, SHAPE));
        device_error("upload", gpu.upload(x.view()));
        device_error("download", gpu.download(&t));
        device_error("conv", conv.forward(&gpu, &t));
        device_error(
            "new conv",
            GpuConv2d::new(&gpu, spec, w.view(), Some(b.view())),
        );
        device_error("relu", GpuRelu.forward(&gpu, &t));
        device_error("softmax", GpuSoftmax.forward(&gpu, &t));
        device_error(
            "max pool",
            GpuMaxPool2d::new(MaxPool2d::caffe(2, 2)).forward(&gpu, &t),
        );
        device_error("zoom", GpuZoom::new(Zoom { factor: 2 }).forward(&gpu, &t));
        device_error("argmax", gpu.argmax(&t));
        device_error("empty", gpu.empty(SHAPE));
        assert_prompt(
            start.elapsed(),
            "failing 13 operations (two forward passes, creating a plan and a convolution, upload, \
             download, six ops, an allocation) on the destroyed device",
        );

        // A GPU-only executor reports the loss; a falling-back one runs on the CPU.
        assert!(
            Executor::gpu(&net, &gpu)
                .forward(x.view())
                .unwrap_err()
                .is_gpu_failure()
        );
        let run = Executor::gpu_or_cpu(&net, Ok(&gpu))
            .forward(x.view())
            .unwrap();
        assert_eq!(run.ran_on, RanOn::Cpu);
        assert!(run.fallback_reason.unwrap().contains("lost"));
        let want = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
        assert_eq!(run.output, want);
        assert!(rel_error(before.view(), want.view()) < 1e-4);
    });
}

#[test]
fn a_wait_that_runs_out_is_an_error_and_marks_the_device_lost() {
    within(Duration::from_secs(120), || {
        let mut gpu = Gpu::new().unwrap();
        // The documented default, unless the environment chooses another.
        let default = match std::env::var("DILATED_GPU_TIMEOUT") {
            Err(_) => Some(Duration::from_secs(600)),
            Ok(_) => GpuOptions::from_env().timeout,
        };
        assert_eq!(gpu.timeout(), default, "the default timeout");
        // Enough work that no submission finishes within a nanosecond.
        let spec = Conv2d::new(32, 32, 3).pad(1);
        let w = random4(&mut rng(8), spec.weight_shape());
        let b = common::random1(&mut rng(9), 32);
        let conv = GpuConv2d::new(&gpu, spec, w.view(), Some(b.view())).unwrap();
        let t = gpu
            .upload(random4(&mut rng(10), [1, 32, 48, 48]).view())
            .unwrap();
        gpu.set_timeout(Some(Duration::from_nanos(1)));
        let mut timed_out = None;
        for _ in 0..5 {
            if let Err(e) = conv.forward(&gpu, &t) {
                timed_out = Some(e);
                break;
            }
        }
        let err = timed_out.expect("a 1 ns wait ran out");
        assert!(
            matches!(&err, Error::Device(m) if m.contains("no answer within")),
            "{err:?}"
        );
        assert!(gpu.is_lost());
        // Later operations fail at once instead of queueing behind the stuck work (a wait
        // for it would now take up to WAIT).
        gpu.set_timeout(Some(WAIT));
        let start = std::time::Instant::now();
        device_error("after the timeout", conv.forward(&gpu, &t));
        device_error("after the timeout", gpu.download(&t));
        assert_prompt(
            start.elapsed(),
            "a forward pass and a download after the wait ran out",
        );
    });
}

fn dilated_without_adapter(args: &[&str]) -> std::process::Output {
    common::run_cli(args, &[("WGPU_ADAPTER_NAME", "no adapter is called this")])
}

#[test]
fn the_command_line_tool_falls_back_to_the_cpu_unless_told_not_to() {
    use dilated::net::{Model, PresetOptions};
    let dir = tempfile::tempdir().unwrap();
    let net = Model::Kitti
        .build(&PresetOptions {
            width_divisor: 32,
            ..Default::default()
        })
        .unwrap();
    let weights = dir.path().join("w.safetensors");
    dilated::weights::write_safetensors(&weights, &net.weight_set().unwrap()).unwrap();
    let x = random4(&mut rng(11), [1, 3, 377, 381]).mapv(|v| v * 60.0);
    let input = dir.path().join("x.npy");
    dilated::io::write_npy(&input, &x).unwrap();
    let output = dir.path().join("y.npy");
    let mut args = vec![
        "run",
        "--model",
        "kitti",
        "--width-divisor",
        "32",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    let out = dilated_without_adapter(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!("{stderr}");
    assert!(
        stderr.contains("warning: ran on the CPU instead of the GPU"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("computed on the CPU"));
    let want = CpuPlan::new(&net).unwrap().forward(x.view()).unwrap();
    assert_eq!(dilated::io::read_npy4(&output).unwrap(), want);

    // --gpu requires the device.
    std::fs::remove_file(&output).unwrap();
    args.push("--gpu");
    let out = dilated_without_adapter(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no GPU adapter found"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!output.exists());

    // Segmentation falls back the same way.
    let img = dir.path().join("in.png");
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 5) as u8, (y * 7) as u8, 9]))
        .save(&img)
        .unwrap();
    let png = dir.path().join("labels.png");
    let out = dilated_without_adapter(&[
        "segment",
        img.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--model",
        "dilation7_kitti",
        "--width-divisor",
        "32",
        "--weights",
        weights.to_str().unwrap(),
        "--tile",
        "380x380",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!("{stderr}");
    assert!(stderr.contains("segmenting on the CPU"), "{stderr}");
    assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), (40, 30));
}
