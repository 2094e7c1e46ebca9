"""launch/: every accelerate config loads with accelerate's own loader, uses only keys accelerate knows, and has
the settings and launch line its header promises; the shell scripts parse (bash -n) and use only existing rlkit
commands and flags."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser

from rlkit.cli import build_parser

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
CONFIGS = sorted(LAUNCH.glob("*.yaml"))

# what each header promises (the key names as in the yaml file)
PROMISES = {
    "ddp.yaml": {"distributed_type": "MULTI_GPU"},
    # torch.distributed.run's launcher (accelerate's --cpu one starts a single process), CPU ranks via the env
    "cpu_2proc.yaml": {"distributed_type": "MULTI_GPU", "use_cpu": False},
    "fsdp2.yaml": {"distributed_type": "FSDP", "fsdp_config": {
        "fsdp_version": 2, "fsdp_reshard_after_forward": True, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True, "fsdp_offload_params": False}},
    "fsdp2_offload.yaml": {"distributed_type": "FSDP", "fsdp_config": {
        "fsdp_version": 2, "fsdp_reshard_after_forward": True, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True, "fsdp_offload_params": True}},
    "deepspeed_zero2.yaml": {"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 2}},
    "deepspeed_zero3.yaml": {"distributed_type": "DEEPSPEED", "deepspeed_config": {
        "zero_stage": 3, "zero3_save_16bit_model": True}},
}


def _launch_dests() -> set[str]:
    return {a.dest for a in launch_command_parser()._actions}


def _launch_options() -> set[str]:
    return {o for a in launch_command_parser()._actions for o in a.option_strings}


def test_every_config_is_covered():
    assert {p.name for p in CONFIGS} == set(PROMISES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_known_keys_and_keeps_its_promises(path):
    cfg = load_config_from_file(str(path))           # unknown top-level keys raise here
    raw = yaml.safe_load(path.read_text())
    dests = _launch_dests()
    for key in raw.get("fsdp_config", {}):            # accelerate launch maps fsdp_config.x to --fsdp_x
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in dests, f"{path.name}: unknown key {key}"
    for key in raw.get("deepspeed_config", {}):
        assert key in dests, f"{path.name}: unknown deepspeed_config key {key}"
    for key, want in PROMISES[path.name].items():
        if isinstance(want, dict):
            assert {k: raw[key].get(k) for k in want} == want, path.name
        else:
            got = getattr(cfg, key)
            assert (got.value if hasattr(got, "value") else got) == want, (path.name, key)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_header_has_the_exact_launch_line(path):
    header = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    lines = [ln for ln in header if re.match(r"([A-Z_]+=\S+ )*accelerate launch", ln)]
    assert lines, f"{path.name}: no launch line in the header comment"
    words = shlex.split(lines[0])
    env = dict(w.split("=", 1) for w in words[:words.index("accelerate")])
    assert env == ({"ACCELERATE_USE_CPU": "1"} if path.name == "cpu_2proc.yaml" else {}), (path.name, env)
    ns = launch_command_parser().parse_args(words[words.index("accelerate") + 2:])
    assert Path(ns.config_file).name == path.name and ns.module and ns.training_script == "rlkit.cli"
    cli_args = ns.training_script_args
    assert build_parser().parse_args(cli_args).command == "train"
    assert (LAUNCH.parent / cli_args[1]).is_file(), cli_args[1]


SCRIPTS = [LAUNCH / "rollout_server_local.sh", LAUNCH / "rollout_servers.sh", LAUNCH / "slurm_multinode.sbatch"]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_use_existing_commands_and_flags(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices   # subcommand parsers
    server = {o for a in commands["rollout-server"]._actions for o in a.option_strings}
    for line in re.findall(r"^\s*SERVER(?:_ARGS)?(?:\+)?=\(.*(?:\n\s+--.*)*", text, flags=re.M):   # bash arrays
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line):
            assert flag in server, f"{path.name}: rlkit rollout-server has no {flag}"
    for cmd, body in re.findall(r"rlkit(?:\.cli)? ([a-z-]+)([^\n]*(?:\n +--[^\n]*)*)", text):
        assert cmd in commands, f"{path.name}: rlkit has no command {cmd}"
        options = {o for a in commands[cmd]._actions for o in a.option_strings}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", body):
            assert flag in options, f"{path.name}: rlkit {cmd} has no {flag}"
    assert re.findall(r"rlkit(?:\.cli)? (rollout-server|train)", text), path.name
    for m in re.finditer(r"accelerate launch((?:[^\n]|\\\n)*)", text):
        for flag in re.findall(r"(--[a-z_]+)", m.group(1).split(" -m ")[0]):
            assert flag in _launch_options(), f"{path.name}: accelerate launch has no {flag}"


def test_rollout_servers_dry_run_prints_the_trainer_settings_and_a_valid_command():
    out = subprocess.run(["bash", str(LAUNCH / "rollout_servers.sh"), "--dry-run", "M", "node1", "node2"],
                         env={"PATH": "/usr/bin:/bin", "ROLLOUT_SERVERS": "2", "ROLLOUT_PORT": "6000"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[:2] == ["rollout.engine.addresses=node1:6000,node1:6001,node2:6000,node2:6001",
                       "rollout.engine.allow_remote=true"]
    ns = build_parser().parse_args(shlex.split(out[2])[1:])
    assert (ns.model, ns.host, ns.allow_remote, ns.servers, ns.port) == ("M", "0.0.0.0", True, 2, 6000)


def test_rollout_server_refuses_a_public_interface_without_allow_remote(tiny_model_dir, capsys):
    from rlkit.rollout.launcher import plan, serve
    args = build_parser().parse_args(["rollout-server", "--model", str(tiny_model_dir), "--host", "0.0.0.0",
                                      "--cpu", "--print-only"])
    with pytest.raises(SystemExit, match="refusing to bind vLLM's unauthenticated RL routes to 0.0.0.0"):
        plan(args)
    args.allow_remote = True
    assert serve(args) == 0                    # --print-only: the lines, nothing started
    out = capsys.readouterr().out
    assert "--host 0.0.0.0" in out and "VLLM_SERVER_DEV_MODE=1" in out
    assert "rollout.engine.allow_remote=true" in out and "0.0.0.0:8000" not in out.split("rollout servers:")[1]


def test_local_script_refuses_a_gpu_shared_by_trainer_and_servers(tmp_path):
    import os
    import sys
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text('#!/usr/bin/env bash\nprintf "GPU %s\\n" 0 1 2 3\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(LAUNCH.parent),
           "ROLLOUT_DEVICES": "2,3", "TRAIN_DEVICES": "0,1,2", "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.run(["bash", str(LAUNCH / "rollout_server_local.sh"), "recipes/quickstart.yaml"],
                          cwd=LAUNCH.parent, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "GPU 2 is in both ROLLOUT_DEVICES=2,3 and TRAIN_DEVICES=0,1,2" in proc.stderr


def _fake_bin(tmp_path: Path) -> Path:
    """srun / scontrol / accelerate / rlkit stand-ins that log their arguments (srun runs its command)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "scontrol": 'printf "%s\\n" node1 node2 node3',
        "srun": 'echo "srun $*" >> "$LOG"; while [[ $1 == --* ]]; do shift; done; SLURM_PROCID=1 exec "$@"',
        # training runs while the rollout servers (started in the background) come up
        "accelerate": 'printf "%s\\0" "$@" > "$LOG.accelerate"; for i in $(seq 100); do [[ -e $LOG.rlkit ]] && '
                      'break; sleep 0.1; done',
        "rlkit": 'printf "%s\\0" "$@" > "$LOG.rlkit"',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_slurm_script_builds_the_documented_launch_lines(tmp_path):
    import os
    import sys
    log = tmp_path / "log"
    env = {"PATH": f"{_fake_bin(tmp_path)}:{Path(sys.executable).parent}:/usr/bin:/bin", "LOG": str(log),
           "SLURM_JOB_NODELIST": "node[1-3]", "SLURM_JOB_ID": "1", "ROLLOUT_NODES": "1", "GPUS_PER_NODE": "4",
           "ROLLOUT_SERVERS": "2", "PYTHONPATH": str(LAUNCH.parent), "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.run(["bash", str(LAUNCH / "slurm_multinode.sbatch"), "recipes/quickstart.yaml", "train.steps=5"],
                          cwd=LAUNCH.parent, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    acc = Path(f"{log}.accelerate").read_text().split("\0")[:-1]
    ns = launch_command_parser().parse_args(acc[1:])
    assert (ns.num_machines, ns.machine_rank, ns.num_processes, ns.main_process_ip, ns.main_process_port) == \
        (2, 1, 8, "node1", 29500)
    assert ns.config_file == "launch/fsdp2.yaml" and ns.training_script == "rlkit.cli"
    train = ns.training_script_args
    assert train[:3] == ["train", "recipes/quickstart.yaml", "train.steps=5"]
    assert "rollout.engine.name=vllm_server" in train
    assert "rollout.engine.addresses=node3:8000,node3:8001" in train and "rollout.engine.allow_remote=true" in train
    server = Path(f"{log}.rlkit").read_text().split("\0")[:-1]
    args = build_parser().parse_args(server)
    assert (args.command, args.host, args.allow_remote, args.servers) == ("rollout-server", "0.0.0.0", True, 2)
    sruns = log.read_text().splitlines()
    assert any("--nodelist=node1,node2" in s for s in sruns) and any("--nodelist=node3" in s for s in sruns)
