# shellcheck shell=bash
# Shared helpers of the run/*.sh experiment scripts: sourced, never run on its own.
#
# Variables (all optional, read from the environment):
#   PREFOPT   the prefopt command (default: prefopt)
#   RESULTS   results root, relative to the repository root or absolute (default: results)
#   CONFIGS   config root (default: training_configs)
#   LAUNCH    launcher for train/sft/rm, e.g.
#             "accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml -m prefopt.cli"
#             (default: empty = plain $PREFOPT)
#   EXTRA     "--key value ..." overrides appended to every train/sft/rm call (last one wins)
#   METHODS   space-separated methods to align (default: the experiment's methods)
#   EVAL_CHECKPOINT  checkpoint folder of each run that is evaluated (default: final; or checkpoint-N)
#   DRY_RUN   1 = print each command instead of running it (skips are reported on stderr)
#   FINGERPRINTS  the stage-marker command (default: .venv/bin/python -m prefopt.fingerprints when the repository has
#             a .venv, else python3 -m prefopt.fingerprints)
#
# Skip rule: a stage is skipped only when its marker (.done_<output>.json beside its output, written by
# `python -m prefopt.fingerprints record` after the stage's command succeeded) says that its outputs AND its inputs
# still have the fingerprints recorded then. A changed or missing output, or a changed input (a retrained model, a
# new data file), redoes the stage, and a stage redone with different outputs redoes the stages that read them.

PREFOPT=${PREFOPT:-prefopt}
RESULTS=${RESULTS:-results}
CONFIGS=${CONFIGS:-training_configs}
LAUNCH=${LAUNCH:-}
EXTRA=${EXTRA:-}
BENCH_TRAIN_ARGS=("${BENCH_TRAIN_ARGS[@]}")
EVAL_CHECKPOINT=${EVAL_CHECKPOINT:-final}
DRY_RUN=${DRY_RUN:-0}

# Work from the repository root: config and eval-data paths are relative to it.
REPO_ROOT=${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$REPO_ROOT" || exit 1

read -r -a PREFOPT_CMD <<< "$PREFOPT"
if [[ -n "${FINGERPRINTS:-}" ]]; then
    read -r -a FINGERPRINT_CMD <<< "$FINGERPRINTS"
elif [[ -x .venv/bin/python ]]; then
    FINGERPRINT_CMD=(.venv/bin/python -m prefopt.fingerprints)
else
    FINGERPRINT_CMD=(python3 -m prefopt.fingerprints)
fi
read -r -a EXTRA_ARGS <<< "$EXTRA"
if [[ -n "$LAUNCH" ]]; then
    read -r -a TRAIN_CMD <<< "$LAUNCH"
else
    TRAIN_CMD=("${PREFOPT_CMD[@]}")
fi

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# run CMD...: print the command (shell-quoted, one line) when DRY_RUN=1, run it otherwise.
run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        local out="" arg
        for arg in "$@"; do out+="$(printf '%q' "$arg") "; done
        printf '%s\n' "${out% }"
    else
        log "+ $*"
        "$@"
    fi
}

# marker_of OUTPUT: the marker file of a stage whose (first) output is OUTPUT.
marker_of() { printf '%s/.done_%s.json' "$(dirname "$1")" "$(basename "$1")"; }

# done_ OUTPUT [NAME]: true when OUTPUT's marker exists and its recorded outputs and inputs are unchanged (checked by
# `prefopt.fingerprints check`); says on stderr why a stage is skipped or redone.
done_() {
    local path=$1 name=${2:-$1} marker why
    marker=$(marker_of "$path")
    if [[ ! -f "$marker" ]]; then
        [[ -e "$path" ]] && log "redo $name: $path exists but has no marker $marker"
        return 1
    fi
    if why=$("${FINGERPRINT_CMD[@]}" check "$marker" 2>&1); then
        log "skip $name: $path unchanged"
        return 0
    fi
    log "redo $name: ${why#stale: }"
    return 1
}

# mark OUTPUT [--also PATH]... [--in PATH]...: record the fingerprints of OUTPUT (which must exist), of the other
# outputs (--also) and of the stage's inputs (--in) into OUTPUT's marker. Nothing in a dry run; only a warning when
# the command left no OUTPUT (the stage then reruns next time).
mark() {
    [[ "$DRY_RUN" == 1 ]] && return 0
    local output=$1 args=()
    shift
    if [[ ! -e "$output" ]]; then
        log "no marker for $output: the command did not write it"
        return 0
    fi
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --also) args+=("$2") ;;
            --in) args+=("--input=$2") ;;
            *) log "mark: expected --also or --in, got $1"; exit 2 ;;
        esac
        shift 2
    done
    "${FINGERPRINT_CMD[@]}" record "$(marker_of "$output")" "$output" "${args[@]}"
}

# step NAME OUTPUT [--also PATH]... [--in PATH]... -- CMD...: run CMD unless done_ OUTPUT, then mark its outputs and
# inputs.
step() {
    local name=$1 output=$2 marks=()
    shift 2
    while [[ $# -gt 0 && "$1" != -- ]]; do marks+=("$1"); shift; done
    shift
    done_ "$output" "$name" && return 0
    run "$@"
    mark "$output" "${marks[@]}"
}

# need FILE HOW: fail early (not in a dry run) when an input file is missing.
need() {
    if [[ "$DRY_RUN" != 1 && ! -e "$1" ]]; then
        log "missing $1 — $2"
        exit 1
    fi
}

# train_stage SUBCOMMAND CONFIG RUN_DIR [--in INPUT]... [--key value ...]: prefopt train|sft|rm into RUN_DIR unless its
# marker (beside RUN_DIR/metrics.json: metrics.json, final/ and $EVAL_CHECKPOINT/, the config and each --in INPUT) is
# unchanged. The run folder is passed as --output_dir so that RESULTS decides where it goes; EXTRA comes last.
train_stage() {
    local sub=$1 config=$2 run_dir=$3 inputs=()
    shift 3
    while [[ "${1:-}" == --in ]]; do inputs+=(--in "$2"); shift 2; done
    step "$sub $(basename "$run_dir")" "$run_dir/metrics.json" --also "$run_dir/final" \
        --also "$run_dir/$EVAL_CHECKPOINT" --in "$config" "${inputs[@]}" -- \
        "${TRAIN_CMD[@]}" "$sub" "$config" --output_dir "$run_dir" "$@" "${EXTRA_ARGS[@]}"
}

# ---------------------------------------------------------------------------------------------------------------------
# Table 1 (SPEC §6.1): table1_pipeline DATASET MODE   (DATASET in hh|tldr, MODE in pref|rw)
#
# Data: read from the Hub by name in every stage (SPEC §6.1 step 1): HH = Anthropic/hh-rlhf, data_dir helpful-base,
# train / test; TL;DR = openai/summarize_from_feedback, config comparisons, train / validation.
# Extra variables:
#   TRAIN_PROMPTS  a local file the rw stage samples from instead of the Hub train split (any of prefopt's formats)
#   TEST_PAIRS     a local pairs file instead of the Hub test split: prompts to sample and chosen responses to judge
#   K (4), TEMPERATURE (0.8), TOP_K (0), MAX_NEW_TOKENS (hh 200, tldr 75), N_TEST_PROMPTS (512), N_JUDGE (100)
#   SAMPLE_ARGS    extra flags for every `prefopt sample` (e.g. "--backend vllm --batch-size 64")
#   JUDGE_ARGS     extra flags for every `prefopt judge` (e.g. "--workers 8 --model gpt-4-0613")
#   SKIP_JUDGE     1 = no judge calls (no endpoint), the RM's mean reward only
#   STAGES         "train" = stop after the alignment runs (every script; evaluate later by rerunning without it)
table1_pipeline() {
    local dataset=$1 mode=$2
    local setting="${dataset}_${mode}" template max_new
    case "$dataset" in
        hh) template=hh_helpfulness; max_new=200 ;;
        tldr) template=tldr_summary; max_new=75 ;;
        *) log "unknown dataset $dataset"; exit 2 ;;
    esac
    local methods=${METHODS:-fpo dpo exo}
    local k=${K:-4} temperature=${TEMPERATURE:-0.8} top_k=${TOP_K:-0}
    local max_new_tokens=${MAX_NEW_TOKENS:-$max_new}
    local n_test=${N_TEST_PROMPTS:-512} n_judge=${N_JUDGE:-100}
    local out="$RESULTS/table1"
    # Hub sources and how to read them; a local TRAIN_PROMPTS / TEST_PAIRS is read with its format detected.
    local hub hub_args=() train_split test_split
    case "$dataset" in
        hh) hub=Anthropic/hh-rlhf; hub_args=(--data-dir helpful-base --format hh); train_split=train; test_split=test ;;
        tldr) hub=openai/summarize_from_feedback; hub_args=(--data-config comparisons --format tldr)
              train_split=train; test_split=validation ;;
    esac
    local train_prompts=${TRAIN_PROMPTS:-$hub} test_pairs=${TEST_PAIRS:-$hub}
    local train_source=() test_source=() baseline_source=()
    if [[ -z "${TRAIN_PROMPTS:-}" ]]; then train_source=("${hub_args[@]}" --split "$train_split"); fi
    if [[ -z "${TEST_PAIRS:-}" ]]; then
        test_source=("${hub_args[@]}" --split "$test_split")
        baseline_source=("${hub_args[@]/#--/--baseline-}" --baseline-split "$test_split")
    fi
    local sample_args judge_args
    read -r -a sample_args <<< "${SAMPLE_ARGS:-}"
    read -r -a judge_args <<< "${JUDGE_ARGS:-}"
    # HH / TL;DR prompts are text that already ends in the assistant cue: never through a chat template
    local sampling=(--temperature "$temperature" --top-k "$top_k" --max-new-tokens "$max_new_tokens" --chat-template never
                    "${sample_args[@]}")

    local sft_dir="$out/${dataset}_sft" rm_dir="$out/${dataset}_rm"
    local sft_model="$sft_dir/final" rm_model="$rm_dir/final"

    # 1. SFT and 2. reward model (shared by the pref and rw settings of a dataset)
    train_stage sft "$CONFIGS/table1/$dataset/sft.yaml" "$sft_dir"
    train_stage rm "$CONFIGS/table1/$dataset/rm.yaml" "$rm_dir"

    # 3. rw data: K samples per train prompt from the SFT model, labelled by the RM
    local data_override=() train_inputs=(--in "$sft_model")
    if [[ "$mode" == rw ]]; then
        local samples="$out/$setting/train_samples.jsonl" rw_data="$out/$setting/rw_train.jsonl"
        if ! done_ "$samples" "sample train K=$k"; then
            [[ -n "${TRAIN_PROMPTS:-}" ]] && need "$train_prompts" "TRAIN_PROMPTS names no file"
            run "${PREFOPT_CMD[@]}" sample "$sft_model" "$train_prompts" "$samples" --k "$k" "${train_source[@]}" \
                "${sampling[@]}"
            mark "$samples" --in "$sft_model" --in "$train_prompts"
        fi
        step "label" "$rw_data" --in "$rm_model" --in "$samples" -- \
            "${PREFOPT_CMD[@]}" label --overwrite "$rm_model" "$samples" "$rw_data"  # a stale rw file is redone
        data_override=(--data.train "$rw_data")
        train_inputs+=(--in "$rw_data")
    fi

    # 4. align each method from the SFT model (policy and reference)
    local method
    for method in $methods; do
        train_stage train "$CONFIGS/table1/$setting/$method.yaml" "$out/${setting}_${method}" "${train_inputs[@]}" \
            --model.name_or_path "$sft_model" --model.ref_name_or_path "$sft_model" "${data_override[@]}"
    done
    [[ "${STAGES:-all}" == train ]] && return 0  # STAGES=train: train now, evaluate in a later call

    # 5. evaluation: 4 samples on N_TEST_PROMPTS test prompts from the SFT model and each policy
    local eval_dir="$out/eval/${dataset}"
    local sft_samples="$eval_dir/sft_samples.jsonl"
    if ! done_ "$sft_samples" "sample test sft"; then
        [[ -n "${TEST_PAIRS:-}" ]] && need "$test_pairs" "TEST_PAIRS names no file"
        run "${PREFOPT_CMD[@]}" sample "$sft_model" "$test_pairs" "$sft_samples" --k 4 --limit "$n_test" \
            "${test_source[@]}" "${sampling[@]}"
        mark "$sft_samples" --in "$sft_model" --in "$test_pairs"
    fi
    step "mean-reward sft" "$eval_dir/sft_mean_reward.json" --in "$rm_model" --in "$sft_samples" -- \
        "${PREFOPT_CMD[@]}" mean-reward "$rm_model" "$sft_samples" --out "$eval_dir/sft_mean_reward.json"

    for method in $methods; do
        local run_dir="$out/${setting}_${method}"
        local ev="$run_dir/eval_${EVAL_CHECKPOINT}" policy="$run_dir/$EVAL_CHECKPOINT"
        step "sample test $method" "$ev/samples.jsonl" --in "$policy" --in "$test_pairs" -- \
            "${PREFOPT_CMD[@]}" sample "$policy" "$test_pairs" "$ev/samples.jsonl" --k 4 --limit "$n_test" \
                "${test_source[@]}" "${sampling[@]}"
        step "mean-reward $method" "$ev/mean_reward.json" --in "$rm_model" --in "$ev/samples.jsonl" -- \
            "${PREFOPT_CMD[@]}" mean-reward "$rm_model" "$ev/samples.jsonl" --out "$ev/mean_reward.json"
        if [[ "${SKIP_JUDGE:-0}" != 1 ]]; then
            step "judge $method vs sft" "$ev/vs_sft/winrate.json" --in "$ev/samples.jsonl" --in "$sft_samples" -- \
                "${PREFOPT_CMD[@]}" judge "$ev/samples.jsonl" "$sft_samples" "$ev/vs_sft" \
                    --template "$template" --baseline-kind samples --n-prompts "$n_judge" "${judge_args[@]}"
            step "judge $method vs chosen" "$ev/vs_chosen/winrate.json" --in "$ev/samples.jsonl" --in "$test_pairs" -- \
                "${PREFOPT_CMD[@]}" judge "$ev/samples.jsonl" "$test_pairs" "$ev/vs_chosen" \
                    --template "$template" --baseline-kind chosen --n-prompts "$n_judge" "${baseline_source[@]}" \
                    "${judge_args[@]}"
        fi
    done

    # 6. the table of every Table 1 run folder evaluated so far (cheap: always rebuilt), Markdown and LaTeX
    run "${PREFOPT_CMD[@]}" table1 "$out" --checkpoint "$EVAL_CHECKPOINT" --out "$out/table1.md"
    run "${PREFOPT_CMD[@]}" table1 "$out" --checkpoint "$EVAL_CHECKPOINT" --latex --out "$out/table1.tex"
}

# ---------------------------------------------------------------------------------------------------------------------
# Tables 2 and 3 (SPEC §6.2, §6.3): bench_pipeline TABLE SETTING FAMILY DEFAULT_METHODS
#   configs $CONFIGS/<table>/<setting>/<method>.yaml, runs $RESULTS/<table>/<setting>_<method>,
#   benchmark answers and results $RESULTS/<table>/bench/<setting>/<method>/, table $RESULTS/<table>/bench/<setting>/table.md
#
# Extra variables:
#   BENCHMARKS     (default: "alpaca_eval arena_hard mt_bench", and open_llm_v2 (Open LLM Leaderboard v2 through lm_eval)
#                  for table2)
#   GEN_ARGS       extra flags for every bench-generate (e.g. "--backend vllm" or "--limit 5 --data-dir eval/data")
#   SCORE_ARGS     extra flags for every bench-score (e.g. "--workers 8")
#   ALPACA_BASELINE / ARENA_BASELINE  --baseline files for alpaca_eval / arena_hard scoring (default: the command's own)
#   ARENA_HARD_DIR your checkout of arena-hard-auto at its last v0.1 commit (needed for arena_hard: questions, baseline
#                  answers and the official judge configuration are read from it at run time)
#   TABLE_ARGS     extra flags for bench-table (e.g. "--latex")
#   BENCH_TRAIN_ARGS  (an array a script may set) extra overrides of every training call, before EXTRA
bench_pipeline() {
    local table=$1 setting=$2 family=$3 default_methods=$4
    local methods=${METHODS:-$default_methods}
    local default_benchmarks="alpaca_eval arena_hard mt_bench"
    [[ "$table" == table2 ]] && default_benchmarks+=" open_llm_v2"  # the f-PO paper reports it beside Table 2's
    local benchmarks=${BENCHMARKS:-$default_benchmarks}
    local gen_args score_args table_args
    read -r -a gen_args <<< "${GEN_ARGS:-}"
    read -r -a score_args <<< "${SCORE_ARGS:-}"
    read -r -a table_args <<< "${TABLE_ARGS:-}"
    local out="$RESULTS/$table" bench_dir="$RESULTS/$table/bench/$setting"
    local method benchmark

    local train_inputs=() train_args=("${BENCH_TRAIN_ARGS[@]}")
    [[ ${#train_args[@]} -ge 2 && "${train_args[0]}" == --data.train ]] && train_inputs=(--in "${train_args[1]}")
    for method in $methods; do
        train_stage train "$CONFIGS/$table/$setting/$method.yaml" "$out/${setting}_${method}" "${train_inputs[@]}" \
            "${train_args[@]}"
    done
    [[ "${STAGES:-all}" == train ]] && return 0  # STAGES=train: train now, evaluate in a later call

    for method in $methods; do
        local model="$out/${setting}_${method}/$EVAL_CHECKPOINT" dir="$bench_dir/$method"
        for benchmark in $benchmarks; do
            local answers="$dir/${benchmark}_answers.jsonl" arena=() arena_inputs=()
            [[ "$benchmark" == alpaca_eval || "$benchmark" == open_llm_v2 ]] && answers="$dir/${benchmark}_answers.json"
            if [[ "$benchmark" == arena_hard ]]; then
                if [[ -z "${ARENA_HARD_DIR:-}" ]]; then
                    log "arena_hard needs ARENA_HARD_DIR: your checkout of arena-hard-auto at its last v0.1 commit"
                    [[ "$DRY_RUN" == 1 ]] || exit 2
                fi
                arena=(--arena-hard-dir "${ARENA_HARD_DIR:-ARENA_HARD_DIR}")
                arena_inputs=(--in "${ARENA_HARD_DIR:-ARENA_HARD_DIR}/config/judge_config.yaml")
            fi
            step "bench-generate $method $benchmark" "$answers" --in "$model" "${arena_inputs[@]}" -- \
                "${PREFOPT_CMD[@]}" bench-generate "$model" "$benchmark" --family "$family" --out "$dir" \
                    --name "$method" "${arena[@]}" "${gen_args[@]}"
            local baseline=()
            [[ "$benchmark" == alpaca_eval && -n "${ALPACA_BASELINE:-}" ]] && baseline=(--baseline "$ALPACA_BASELINE")
            [[ "$benchmark" == arena_hard && -n "${ARENA_BASELINE:-}" ]] && baseline=(--baseline "$ARENA_BASELINE")
            local score_inputs=(--in "$answers" "${arena_inputs[@]}")
            [[ ${#baseline[@]} -gt 0 ]] && score_inputs+=(--in "${baseline[1]}")
            step "bench-score $method $benchmark" "$dir/$benchmark.json" "${score_inputs[@]}" -- \
                "${PREFOPT_CMD[@]}" bench-score "$benchmark" "$answers" --name "$method" --out "$dir/$benchmark.json" \
                    "${arena[@]}" "${baseline[@]}" "${score_args[@]}"
        done
    done

    # The table is cheap and always rebuilt from whatever results exist; public reference numbers (SPEC §6.3), when
    # the setting has them, are shown beside ours and marked as such.
    local reference=()
    [[ -f "$CONFIGS/$table/$setting/reference.json" ]] && reference=(--reference "$CONFIGS/$table/$setting/reference.json")
    run "${PREFOPT_CMD[@]}" bench-table "$bench_dir" --out "$bench_dir/table.md" "${reference[@]}" "${table_args[@]}"
}
