"""The human-readable reports: the speed table and the accuracy table."""

from .common import ENGINES


def _fmt(value, kind):
    if value is None:
        return "-"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "pct":
        return f"{100 * value:.0f}%"
    if kind == "mb":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def format_table(result):
    """The human-readable report."""
    meta = result["meta"]
    gemm = meta["gemm"]
    noisy = "  (more than 1 thread: expect noisy figures)" if meta["threads"] > 1 else ""
    torch_text = (
        (gemm["torch_blas"] or f"torch {meta['torch']}") if meta["torch"] else "PyTorch not used"
    )
    lines = [
        f"minidark bench  {meta['date']}  {meta['cpu']} ({meta['cpu_count']} cores)",
        f"threads {meta['threads']}{noisy}",
        f"numpy {meta['numpy']}, {'; '.join(gemm['blas'])}; {torch_text}",
        *kernel_note(meta),
        f"float32 GEMM {gemm['size']}^3: numpy {_fmt(gemm['gflops'], 'int')} GFLOP/s "
        f"(best of {len(gemm['gflops_runs'])} runs; the reference for the fractions)"
        + (
            f", PyTorch {_fmt(gemm['torch_gflops'], 'int')} GFLOP/s"
            if gemm.get("torch_gflops")
            else ""
        ),
        "",
    ]
    for entry in result["results"]:
        md, pt, ratios = entry["minidark"], entry["torch"], entry["ratios"]
        lines.append(
            f"{entry['cfg']}: batch {entry['batch']}, {entry['params']:,} parameters, "
            f"{entry['forward_flops'] / 1e6:.2f} MFLOPs/image forward, "
            f"{entry['training_flops'] / 1e6:.2f} training"
        )
        lines.append(
            f"  data: {entry['data']}; {meta['repeats']} x (minidark, PyTorch) "
            f"pairs, {meta['steps']} timed steps after {meta['warmup']} warm-up, "
            f"{meta['eval_passes']} eval passes"
        )
        if entry["torch_error"]:
            lines.append(f"  PyTorch: {entry['torch_error']}")
        head = f"  {'':<30}{'minidark':>12}{'PyTorch':>12}   {'minidark/PyTorch (min-max)'}"
        lines.append(head)
        limit = entry["gemm_limit_img_s"]
        rows = [
            ("training img/s", "train_img_s", "int"),
            ("  fraction of GEMM rate", "train_gemm_fraction", "pct"),
            ("inference img/s", "eval_img_s", "int"),
            ("  fraction of GEMM rate", "eval_gemm_fraction", "pct"),
            ("training peak RSS MB", "train_peak_rss_mb", "mb"),
            ("evaluation peak RSS MB", "eval_peak_rss_mb", "mb"),
            ("  RSS after imports MB", "rss_after_import_mb", "mb"),
        ]
        for label, key, kind in rows:
            ratio = ratios.get(key)
            ratio_text = (
                f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else ""
            )
            lines.append(
                f"  {label:<30}{_fmt(md and md[key], kind):>12}"
                f"{_fmt(pt and pt[key], kind):>12}   {ratio_text}"
            )
        lines.append(
            f"  GEMM-only limit img/s (net's own GEMM shapes): training "
            f"{_fmt(limit['train'], 'int')}, inference {_fmt(limit['eval'], 'int')}"
        )
        lines.append("")
    lines.append(
        "img/s: higher is better; RSS: lower is better. Ratios are medians of "
        "per-pair ratios. Fraction of GEMM rate = img/s x FLOPs per image / GEMM GFLOP/s."
    )
    return "\n".join(line.rstrip() for line in lines)


def _pm(spread, digits=2, suffix="", sign=""):
    """'mean' or 'mean ± std (min to max)'."""
    if spread is None:
        return "-"
    text = f"{spread['mean']:{sign}.{digits}f}{suffix}"
    if spread["std"] is not None:
        text += (
            f" ± {spread['std']:.{digits}f} ({spread['min']:{sign}.{digits}f} to "
            f"{spread['max']:{sign}.{digits}f})"
        )
    return text


def kernel_note(meta):
    """A line when the environment pins OpenBLAS's kernel and the run kept it."""
    pinned = meta.get("pinned_kernel")
    if not pinned:
        return []
    if meta.get("native_blas"):
        return [
            f"note: OPENBLAS_CORETYPE={pinned} from the environment was dropped in the "
            f"workers, so OpenBLAS runs the CPU's own kernel; --keep-blas-kernel keeps it"
        ]
    return [
        f"note: OPENBLAS_CORETYPE={pinned} is set, so numpy's GEMMs run that kernel, "
        f"not the CPU's own (drop --keep-blas-kernel to measure that)"
    ]


def format_accuracy_table(result):
    """The human-readable accuracy report."""
    meta = result["meta"]
    noisy = "  (more than 1 thread: times are noisy)" if meta["threads"] > 1 else ""
    lines = [
        f"minidark bench --accuracy {meta['epochs']}  {meta['date']}  {meta['cpu']} "
        f"({meta['cpu_count']} cores)",
        f"threads {meta['threads']}{noisy}",
    ]
    first = next((e for e in result["results"] if e["minidark"] or e["torch"]), None)
    if first is not None:
        pools = (first["minidark"] or {}).get("pools", []) + [
            p for p in (first["torch"] or {}).get("pools", []) if p.startswith("torch")
        ]
        lines.append(f"numpy {meta['numpy']}, {'; '.join(pools)}")
    lines += kernel_note(meta)
    lines.append("")
    for entry in result["results"]:
        md, pt = entry["minidark"], entry["torch"]
        epochs = meta["epochs"]
        lines.append(
            f"{entry['cfg']}: batch {entry['batch']} x {entry['subdivisions']} "
            f"subdivisions, {entry['iterations']} iterations = {epochs} epoch"
            f"{'s' if epochs != 1 else ''} of {meta['train_rows']:,} MNIST training "
            f"rows (reshuffled each epoch, the same order for both engines)"
        )
        schedule = ", ".join(
            f"{rate:g} from iteration {i}" for i, rate in entry["rate_schedule"][:6]
        )
        if len(entry["rate_schedule"]) > 6:
            schedule += f", ... ({len(entry['rate_schedule'])} changes)"
        lines.append(f"  learning rate ({entry['policy']}): {schedule}")
        if entry["torch_error"]:
            lines.append(f"  PyTorch: {entry['torch_error']}")
        else:
            same = {True: "yes", False: "NO", None: "-"}
            lines.append(
                f"  PyTorch got minidark's rate at every iteration: "
                f"{same[entry['same_rates']]}; same initial weights: "
                f"{same[entry['same_initial_weights']]}; same batch order: "
                f"{same[entry['same_order']]}"
            )
        lines.append(
            f"  {'seed':<8}{'minidark top-1':>16}{'PyTorch top-1':>16}"
            f"{'difference':>14}{'train s: minidark':>19}{'PyTorch':>9}"
        )
        by_seed = {}
        for engine in ENGINES:
            for run in entry["runs"][engine]:
                by_seed.setdefault(run["seed"], {})[engine] = run
        for seed, pair in by_seed.items():
            a, b = pair.get("minidark"), pair.get("torch")
            diff = f"{100 * (a['top1'] - b['top1']):+.2f} pts" if a and b else "-"
            lines.append(
                f"  {seed:<8}{_fmt(a and 100 * a['top1'], 'f') + '%':>16}"
                f"{(_fmt(100 * b['top1'], 'f') + '%') if b else '-':>16}{diff:>14}"
                f"{_fmt(a and a['train_s'], 'f'):>19}{_fmt(b and b['train_s'], 'f'):>9}"
            )
        count = len(by_seed)
        lines.append(
            f"  top-1 %, mean over {count} seed{'s' if count != 1 else ''}"
            f"{' ± std (min to max)' if count > 1 else ''}:"
        )
        lines.append(f"    minidark  {_pm(md and md['top1_pct'])}")
        lines.append(f"    PyTorch   {_pm(pt and pt['top1_pct'])}")
        lines.append(
            f"    minidark - PyTorch  {_pm(entry['difference_points'], suffix=' pts', sign='+')}"
        )
        lines.append("  wall seconds per run:")
        for label, key in (
            ("training", "train_s"),
            ("test pass", "eval_s"),
            ("whole worker", "wall_s"),
        ):
            lines.append(
                f"    {label:<13} minidark {_pm(md and md[key])}, PyTorch {_pm(pt and pt[key])}"
            )
        if entry["within_target"] is not None:
            verdict = "met" if entry["within_target"] else "NOT met"
            lines.append(
                f"  target |minidark - PyTorch| <= {meta['target_points']} points "
                f"(mean over {count} seed{'s' if count != 1 else ''}): {verdict}"
                + ("; one seed: pass --seeds 0,1,2 to see the spread" if count == 1 else "")
            )
        lines.append("")
    lines.append(
        "Each run trains from the same initial weights (the cfg and seed) in a fresh "
        "process; dropout masks differ between engines."
    )
    return "\n".join(line.rstrip() for line in lines)
