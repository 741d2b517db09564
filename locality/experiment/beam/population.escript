#!/usr/bin/env escript
%% A population of N sparsely activated BEAM processes, driven by commands on
%% stdin and reporting on stdout, one JSON object per line. `locality beam`
%% starts it, measures the VM from outside (smaps, clear_refs, pagemap), and
%% asks it for the VM's own accounting (erlang:memory, allocators).
%%
%% Arguments (key=value): n, pattern (uniform|zipf|sheet), p, seed,
%% interval_ms, hibernate (true|false), min_heap_size (words, 0 = default),
%% radius (sheet), zipf_s (zipf), report_ids (true|false), state_init (heap|bif).
%% Run with +P larger than n (locality sets ERL_FLAGS).
%%
%% Commands (one per line on stdin):
%%   spawn        spawn the n workers; replies {"event":"ready",...}
%%   steps K      run K activation steps, one every interval_ms;
%%                one {"event":"step",...} per step, then {"event":"steps_done"}
%%   ids I1 I2 .. queue one step's worker ids (used before the VM's own pattern)
%%   memory       erlang:memory() and exact per-worker process memory
%%   allocators   per-allocator carrier sizes (system_info, instrument:carriers)
%%   binaries     addresses of a probe refc binary (binary_alloc placement)
%%   ping         collects the coordinator's garbage, replies {"event":"pong"}:
%%                every command before it is done
%%   quit         halt; end of stdin halts too (at once), so the VM never outlives locality
-mode(compile).
-export([worker/3]).

main(Args) ->
    Cfg = config(Args),
    rand:seed(exsss, maps:get(seed, Cfg)),
    emit(#{event => hello, os_pid => list_to_integer(os:getpid()),
           otp_release => list_to_binary(erlang:system_info(otp_release)),
           erts_version => list_to_binary(erlang:system_info(version)),
           emu_flavor => erlang:system_info(emu_flavor),
           wordsize => erlang:system_info(wordsize),
           process_limit => erlang:system_info(process_limit),
           schedulers => erlang:system_info(schedulers),
           config => Cfg}),
    Self = self(),
    spawn_link(fun() -> stdin_reader(Self) end),
    loop(Cfg, undefined).

%% Reads commands in its own process, so end of stdin (locality gone, even
%% killed) halts the VM at once, also in the middle of a long `steps`.
stdin_reader(Main) ->
    case io:get_line(standard_io, "") of
        eof -> halt(0);
        {error, _} -> halt(0);
        Line -> Main ! {command, Line}, stdin_reader(Main)
    end.

%% ---------------------------------------------------------------- config

config(Args) ->
    Defaults = #{n => 1000000, pattern => sheet, p => 0.01, seed => 0,
                 interval_ms => 1000, hibernate => false, min_heap_size => 0,
                 radius => 3, zipf_s => 1.1, report_ids => false, state_init => heap},
    lists:foldl(fun(Arg, Acc) ->
                        case string:split(Arg, "=") of
                            [K, V] -> Key = list_to_atom(K),
                                      maps:is_key(Key, Defaults) orelse die("unknown argument " ++ K),
                                      Acc#{Key => parse(Key, V)};
                            _ -> die("arguments are key=value, not " ++ Arg)
                        end
                end, Defaults, Args).

parse(pattern, V) -> list_to_atom(V);
parse(state_init, V) ->
    lists:member(V, ["heap", "bif"]) orelse die("state_init must be heap or bif, not " ++ V),
    list_to_atom(V);
parse(hibernate, V) -> list_to_atom(V) =:= true;
parse(report_ids, V) -> list_to_atom(V) =:= true;
parse(p, V) -> number(V);
parse(zipf_s, V) -> number(V);
parse(_, V) -> list_to_integer(V).

number(V) ->
    try list_to_float(V) catch error:badarg -> float(list_to_integer(V)) end.

die(Msg) ->
    emit(#{event => error, message => list_to_binary(Msg)}),
    halt(2).

%% ---------------------------------------------------------------- commands

loop(Cfg, Pids) ->
    receive
        {command, Line} ->
            case string:lexemes(string:trim(Line), " ") of
                ["spawn"] when Pids =:= undefined -> loop(Cfg, spawn_all(Cfg));
                ["steps", K] when Pids =/= undefined ->
                    run_steps(Cfg, Pids, list_to_integer(K)), loop(Cfg, Pids);
                ["ids" | Ids] -> enqueue([list_to_integer(I) || I <- Ids]), loop(Cfg, Pids);
                ["memory"] -> emit(memory_report(Pids)), loop(Cfg, Pids);
                ["allocators"] -> emit(allocator_report()), loop(Cfg, Pids);
                ["binaries"] -> emit(binary_probe()), loop(Cfg, Pids);
                ["ping"] -> garbage_collect(), emit(#{event => pong}), loop(Cfg, Pids);
                ["quit"] -> halt(0);
                Other -> emit(#{event => error, message => iolist_to_binary(
                                  io_lib:format("unknown or out-of-order command ~p", [Other]))}),
                         loop(Cfg, Pids)
            end
    end.

%% ---------------------------------------------------------------- workers

%% A worker's state is a few hundred bytes on its own heap: two counters and
%% a tuple of 8 boxed floats (1 + 3 + 9 + 8 * 3 = 37 words = 296 bytes).
%% state_init=heap builds it with arithmetic, straight on the heap. With
%% state_init=bif the floats come from float/1 in a comprehension, which leaves
%% them in a heap fragment: its ~4 KB eheap_alloc block stays until the first
%% GC (never, for an idle process), and process_info(memory) counts only the
%% 16 words used. Both are real; heap is the clean baseline.
initial_state(Id, heap) ->
    B = (Id rem 1000) / 1000,
    {0, -1, {B + 1, B + 2, B + 3, B + 4, B + 5, B + 6, B + 7, B + 8}};
initial_state(Id, bif) ->
    {0, -1, list_to_tuple([float(Id rem 1000) / 1000 + I || I <- lists:seq(1, 8)])}.

activate({Count, _Last, W}, Step) ->
    {Count + 1, Step, list_to_tuple([X * 0.99 + 0.01 || X <- tuple_to_list(W)])}.

worker(Id, State, Hibernate) ->
    receive
        {act, Step, From, T0} ->
            State2 = activate(State, Step),
            From ! {done, Id, erlang:monotonic_time(nanosecond) - T0},
            idle(Id, State2, Hibernate)
    end.

%% With hibernate=true a worker waits hibernated: its heap is compacted to
%% the live state and its stack dropped (also before its first activation).
idle(Id, State, true) -> erlang:hibernate(?MODULE, worker, [Id, State, true]);
idle(Id, State, false) -> worker(Id, State, false).

spawn_all(#{n := N, hibernate := Hib, min_heap_size := Mhs, state_init := Init}) ->
    Before = erlang:memory(),
    SelfBefore = self_memory(),
    Opts = case Mhs of 0 -> []; _ -> [{min_heap_size, Mhs}] end,
    T0 = erlang:monotonic_time(microsecond),
    Pids = list_to_tuple(spawn_n(0, N, Hib, Init, Opts, [])),
    garbage_collect(),
    settle(Pids, N),
    T1 = erlang:monotonic_time(microsecond),
    After = erlang:memory(),
    emit(#{event => ready, n => N, spawn_ms => (T1 - T0) / 1000,
           memory_before => maps:from_list(Before), memory_after => maps:from_list(After),
           coordinator_memory_before => SelfBefore, coordinator_memory_after => self_memory()}),
    Pids.

spawn_n(N, N, _, _, _, Acc) -> lists:reverse(Acc);
spawn_n(I, N, Hib, Init, Opts, Acc) ->
    Pid = spawn_opt(fun() -> idle(I, initial_state(I, Init), Hib) end, Opts),
    spawn_n(I + 1, N, Hib, Init, Opts, [Pid | Acc]).

%% Wait until every worker has run its first reduction (built its state and,
%% with hibernate, hibernated), so "ready" means the population is idle.
settle(Pids, N) ->
    Last = element(N, Pids),
    wait_idle(Last),
    wait_idle(element(1, Pids)).

wait_idle(Pid) ->
    case erlang:process_info(Pid, [status, current_function]) of
        [{status, waiting}, _] -> ok;
        _ -> timer:sleep(5), wait_idle(Pid)
    end.

self_memory() ->
    {memory, M} = erlang:process_info(self(), memory),
    M.

%% ---------------------------------------------------------------- activation

run_steps(Cfg = #{interval_ms := Interval}, Pids, K) ->
    Start = erlang:monotonic_time(millisecond),
    lists:foreach(fun(S) ->
                          Due = Start + S * Interval,
                          Now = erlang:monotonic_time(millisecond),
                          Due > Now andalso timer:sleep(Due - Now),
                          one_step(Cfg, Pids, next_step())
                  end, lists:seq(0, K - 1)),
    emit(#{event => steps_done, steps => K}).

next_step() ->
    S = case get(step) of undefined -> 0; X -> X end,
    put(step, S + 1),
    S.

%% Steps given by locality (`ids ...` lines: the Python harness's own pattern
%% generator, so both populations see the same schedule) come first; then the
%% VM's own seeded generator.
enqueue(Ids) ->
    Queue = case get(schedule) of undefined -> queue:new(); Q -> Q end,
    put(schedule, queue:in(Ids, Queue)).

next_ids(Cfg = #{n := N, p := P}) ->
    case queue:out(case get(schedule) of undefined -> queue:new(); Q -> Q end) of
        {{value, Ids}, Rest} -> put(schedule, Rest), {harness, Ids};
        {empty, _} -> {vm, pick(Cfg, N, max(1, min(N, round(P * N))))}
    end.

one_step(Cfg = #{report_ids := ReportIds}, Pids, Step) ->
    {Source, Ids} = next_ids(Cfg),
    T0 = erlang:monotonic_time(nanosecond),
    Self = self(),
    lists:foreach(fun(I) -> element(I + 1, Pids) ! {act, Step, Self, T0} end, Ids),
    Lats = lists:sort(collect(length(Ids), [])),
    T1 = erlang:monotonic_time(nanosecond),
    Base = #{event => step, step => Step, activated => length(Ids), source => Source,
             elapsed_us => (T1 - T0) / 1000, lat_sample_ns => quantile_sample(Lats, 100)},
    Timed = case Lats of
                [] -> Base;  % an empty step (the harness's uniform can draw none)
                _ -> Base#{lat_p50_us => pct(Lats, 0.50) / 1000, lat_p99_us => pct(Lats, 0.99) / 1000,
                           lat_max_us => lists:last(Lats) / 1000}
            end,
    emit(case ReportIds of true -> Timed#{ids => lists:sort(Ids)}; false -> Timed end).

collect(0, Acc) -> Acc;
collect(K, Acc) -> receive {done, _Id, Lat} -> collect(K - 1, [Lat | Acc]) end.

%% At most M evenly spaced order statistics of a sorted list: the distribution, in little.
quantile_sample(Sorted, M) ->
    L = length(Sorted),
    case L =< M of
        true -> Sorted;
        false -> [lists:nth(1 + (I * (L - 1)) div (M - 1), Sorted) || I <- lists:seq(0, M - 1)]
    end.

pct(Sorted, Q) -> lists:nth(max(1, min(length(Sorted), round(Q * length(Sorted)))), Sorted).

%% Activation patterns, seeded by rand:seed(exsss, Seed): K distinct ids in [0, N).
pick(#{pattern := uniform}, N, K) -> distinct(fun() -> rand:uniform(N) - 1 end, K, #{});
pick(#{pattern := zipf, zipf_s := S}, N, K) -> distinct(fun() -> zipf(N, S) end, K, #{});
pick(#{pattern := sheet, radius := R}, N, K) ->
    W = ceil_sqrt(N),
    sheet(N, W, R, K, #{}, []);
pick(#{pattern := Other}, _, _) -> die("unknown pattern " ++ atom_to_list(Other)).

distinct(_, K, Acc) when map_size(Acc) >= K -> maps:keys(Acc);
distinct(Draw, K, Acc) -> distinct(Draw, K, Acc#{Draw() => true}).

%% Zipf over ranks 1..N by inverting the continuous (bounded Pareto) CDF;
%% rank r is worker r - 1, so the hottest workers have the smallest ids.
zipf(N, S) when abs(S - 1.0) < 1.0e-9 ->
    min(N, floor(math:pow(N + 1, rand:uniform_real()))) - 1;
zipf(N, S) ->
    A = 1 - S,
    R = math:pow((math:pow(N + 1, A) - 1) * rand:uniform_real() + 1, 1 / A),
    max(0, min(N - 1, floor(R) - 1)).

%% Sheet: workers on a width x width grid (worker i at (i rem W, i div W));
%% each burst activates the disc of radius R around a random centre, until K.
sheet(_, _, _, K, Acc, Order) when map_size(Acc) >= K ->
    lists:sublist(lists:reverse(Order), K);
sheet(N, W, R, K, Acc, Order) ->
    C = rand:uniform(N) - 1,
    Cx = C rem W, Cy = C div W,
    Disc = [Y * W + X || Dy <- lists:seq(-R, R), Dx <- lists:seq(-R, R),
                         Dx * Dx + Dy * Dy =< R * R,
                         X <- [Cx + Dx], Y <- [Cy + Dy],
                         X >= 0, X < W, Y >= 0, Y * W + X < N],
    {Acc2, Order2} = lists:foldl(fun(I, {A, O}) ->
                                         case maps:is_key(I, A) of
                                             true -> {A, O};
                                             false -> {A#{I => true}, [I | O]}
                                         end
                                 end, {Acc, Order}, Disc),
    sheet(N, W, R, K, Acc2, Order2).

ceil_sqrt(N) ->
    S = trunc(math:sqrt(N)),
    hd([X || X <- [S - 1, S, S + 1, S + 2], X >= 0, X * X >= N]).

%% ---------------------------------------------------------------- reports

memory_report(Pids) ->
    Workers = case Pids of undefined -> []; _ -> tuple_to_list(Pids) end,
    {Sum, Heap, Hibernated} = lists:foldl(
        fun(P, {S, H, Hb}) ->
                case erlang:process_info(P, [memory, total_heap_size, current_function]) of
                    [{memory, M}, {total_heap_size, T}, {current_function, F}] ->
                        {S + M, H + T, Hb + case F of {erlang, hibernate, 3} -> 1; _ -> 0 end};
                    undefined -> {S, H, Hb}
                end
        end, {0, 0, 0}, Workers),
    #{event => memory, memory => maps:from_list(erlang:memory()),
      workers => length(Workers), workers_memory_sum => Sum,
      workers_heap_words_sum => Heap, workers_hibernated => Hibernated,
      coordinator_memory => self_memory(),
      process_count => erlang:system_info(process_count)}.

allocator_report() ->
    Allocs = erlang:system_info(alloc_util_allocators),
    Sizes = maps:from_list([{A, allocator_sizes(A)} || A <- Allocs]),
    Carriers = case catch instrument:carriers() of
                   {ok, {_HistStart, Cs}} ->
                       lists:foldl(fun({Type, _InPool, Size, _Unscanned, Allocations, _Free}, Acc) ->
                                           Used = lists:sum([S || {_, _, S} <- Allocations]),
                                           #{count := C0, bytes := B0, used := U0} =
                                               maps:get(Type, Acc, #{count => 0, bytes => 0, used => 0}),
                                           Acc#{Type => #{count => C0 + 1, bytes => B0 + Size, used => U0 + Used}}
                                   end, #{}, Cs);
                   _ -> #{}
               end,
    #{event => allocators, allocators => Sizes, carriers => Carriers,
      mseg => mseg_summary()}.

%% Sum over an allocator's instances of multiblock/singleblock carrier bytes,
%% split by where the carriers came from (mseg = own mmap, sys = malloc).
allocator_sizes(A) ->
    Instances = case erlang:system_info({allocator, A}) of
                    L when is_list(L) -> L;
                    _ -> []
                end,
    lists:foldl(fun({instance, _, Info}, Acc) ->
                        lists:foldl(fun(Kind, Acc2) -> add_carriers(Kind, proplists:get_value(Kind, Info), Acc2) end,
                                    Acc, [mbcs, sbcs, mbcs_pool]);
                   (_, Acc) -> Acc
                end, #{blocks_bytes => 0, carriers_bytes => 0, mseg_carriers_bytes => 0,
                       sys_carriers_bytes => 0, carriers => 0}, Instances).

add_carriers(_, undefined, Acc) -> Acc;
add_carriers(_, Info, Acc = #{blocks_bytes := B, carriers_bytes := C, mseg_carriers_bytes := M,
                              sys_carriers_bytes := S, carriers := N}) ->
    %% OTP 25: {blocks, [{Type, [{count, Now, MaxLast, Max}, {size, Now, ..}]}]},
    %% {carriers, Now, ..}, {carriers_size, Now, ..}, {mseg_alloc_carriers_size, V}, ...
    Blocks = lists:sum([Now || {blocks, Types} <- Info, {_, Props} <- Types,
                               {size, Now, _, _} <- Props]),
    Acc#{blocks_bytes => B + Blocks,
         carriers_bytes => C + first([V || {carriers_size, V, _, _} <- Info]),
         mseg_carriers_bytes => M + first([V || {mseg_alloc_carriers_size, V} <- Info]),
         sys_carriers_bytes => S + first([V || {sys_alloc_carriers_size, V} <- Info]),
         carriers => N + first([V || {carriers, V, _, _} <- Info])}.

first([V | _]) when is_integer(V) -> V;
first(_) -> 0.

mseg_summary() ->
    Instances = case catch erlang:system_info({allocator, mseg_alloc}) of
                    L when is_list(L) -> L;
                    _ -> []
                end,
    lists:foldl(fun({instance, _, Info}, Acc = #{segments := Sg, segments_bytes := Sb, cached_segments := Cs}) ->
                        Status = proplists:get_value(status, proplists:get_value(memkind, Info, []), []),
                        {segments, SgNow, _, _} = lists:keyfind(segments, 1, Status),
                        {segments_size, SbNow, _, _} = lists:keyfind(segments_size, 1, Status),
                        Acc#{segments => Sg + SgNow, segments_bytes => Sb + SbNow,
                             cached_segments => Cs + proplists:get_value(cached_segments, Status, 0)};
                   (_, Acc) -> Acc
                end, #{segments => 0, segments_bytes => 0, cached_segments => 0}, Instances).

%% A freshly allocated refc binary's address (from process_info(_, binary)):
%% shows which mapping binary_alloc's carriers live in.
binary_probe() ->
    Bin = binary:copy(<<0:(8 * 4096)>>),
    {binary, Info} = erlang:process_info(self(), binary),
    Addrs = [A || {A, Size, _} <- Info, Size =:= byte_size(Bin)],
    #{event => binaries, addresses => Addrs}.

%% ---------------------------------------------------------------- JSON out

emit(Term) ->
    io:put_chars(standard_io, [json(Term), $\n]).

json(true) -> "true";
json(false) -> "false";
json(undefined) -> "null";
json(null) -> "null";
json(A) when is_atom(A) -> json(atom_to_binary(A));
json(I) when is_integer(I) -> integer_to_list(I);
json(F) when is_float(F) -> float_to_list(F, [{decimals, 3}, compact]);
json(B) when is_binary(B) -> [$", escape(B), $"];
json(M) when is_map(M) ->
    [${, lists:join($,, [[json(key(K)), $:, json(V)] || {K, V} <- lists:sort(maps:to_list(M))]), $}];
json(L) when is_list(L) -> [$[, lists:join($,, [json(X) || X <- L]), $]];
json(T) -> json(iolist_to_binary(io_lib:format("~p", [T]))).

key(K) when is_atom(K) -> atom_to_binary(K);
key(K) when is_binary(K) -> K;
key(K) -> iolist_to_binary(io_lib:format("~p", [K])).

escape(B) -> [case C of $" -> "\\\""; $\\ -> "\\\\"; $\n -> "\\n"; _ when C < 32 -> " "; _ -> C end
              || <<C>> <= B].
