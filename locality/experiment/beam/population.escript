#!/usr/bin/env escript
%% A population of N sparsely activated BEAM processes, driven by commands on
%% stdin and reporting on stdout, one JSON object per line. `locality beam`
%% starts it, measures the VM from outside (smaps, clear_refs, pagemap), and
%% asks it for the VM's own accounting (erlang:memory, allocators).
%%
%% Arguments (key=value): n, pattern (uniform|zipf|sheet), p, seed,
%% interval_ms, hibernate (true|false), min_heap_size (words, 0 = default),
%% radius (sheet), zipf_s (zipf), report_ids (true|false), state_init (heap|bif),
%% and the techniques' own (see the technique sections below):
%% fullsweep_after (-1 = default), gc_after (true|false), order (true|false),
%% migrate_every (steps, 0 = never), group_size (columns per process),
%% state_store (heap|atomics).
%% Run with +P larger than the process count (locality sets ERL_FLAGS, with
%% the technique's VM flags).
%%
%% n is the number of columns (workers). Every technique but grouped runs one
%% process per column; grouped runs ceil(n / group_size).
%%
%% Commands (one per line on stdin):
%%   order_file P the spawn order, a file of n little-endian uint32 (before
%%                spawn; with order=true the columns are spawned, or grouped, in it)
%%   spawn        spawn the population; replies {"event":"ready",...}
%%   steps K      run K activation steps, one every interval_ms;
%%                one {"event":"step",...} per step, then {"event":"steps_done"};
%%                with migrate_every=M, a {"event":"migrate",...} after every M-th step
%%   ids I1 I2 .. queue one step's worker ids (used before the VM's own pattern)
%%   ids_file P   queue the steps of file P (uint32 count, then the ids, per step)
%%   memory       erlang:memory() and exact per-worker process memory
%%   allocators   per-allocator carrier sizes (system_info, instrument:carriers)
%%   binaries     addresses of a probe refc binary (binary_alloc placement)
%%   where I1 ..  pid serial numbers of the processes holding these columns
%%   ping         collects the coordinator's garbage, replies {"event":"pong"}:
%%                every command before it is done
%%   quit         halt; end of stdin halts too (at once), so the VM never outlives locality
-mode(compile).
-export([worker/3, offheap_worker/2]).

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
           eheap_alloc_strategy => allocator_strategy(eheap_alloc),
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
                 radius => 3, zipf_s => 1.1, report_ids => false, state_init => heap,
                 fullsweep_after => -1, gc_after => false, order => false,
                 migrate_every => 0, group_size => 1, state_store => heap},
    Cfg = lists:foldl(fun(Arg, Acc) ->
                              case string:split(Arg, "=") of
                                  [K, V] -> Key = list_to_atom(K),
                                            maps:is_key(Key, Defaults) orelse die("unknown argument " ++ K),
                                            Acc#{Key => parse(Key, V)};
                                  _ -> die("arguments are key=value, not " ++ Arg)
                              end
                      end, Defaults, Args),
    check(Cfg).

parse(pattern, V) -> list_to_atom(V);
parse(state_init, V) -> one_of(state_init, V, ["heap", "bif"]);
parse(state_store, V) -> one_of(state_store, V, ["heap", "atomics"]);
parse(Flag, V) when Flag =:= hibernate; Flag =:= report_ids; Flag =:= gc_after; Flag =:= order ->
    list_to_atom(V) =:= true;
parse(p, V) -> number(V);
parse(zipf_s, V) -> number(V);
parse(_, V) -> list_to_integer(V).

one_of(Key, V, Allowed) ->
    lists:member(V, Allowed) orelse
        die(atom_to_list(Key) ++ " must be one of " ++ lists:join(", ", Allowed) ++ ", not " ++ V),
    list_to_atom(V).

%% Techniques that cannot be combined: each changes what a worker is.
check(Cfg = #{group_size := K, state_store := Store, migrate_every := M, hibernate := Hib}) ->
    K >= 1 orelse die("group_size must be >= 1"),
    (M > 0 andalso (K > 1 orelse Store =/= heap)) andalso
        die("migrate_every needs one process per column with its state on its heap"),
    (K > 1 andalso Hib) andalso die("grouped processes do not hibernate"),
    Cfg.

number(V) ->
    try list_to_float(V) catch error:badarg -> float(list_to_integer(V)) end.

die(Msg) ->
    emit(#{event => error, message => unicode:characters_to_binary(Msg)}),
    halt(2).

%% ---------------------------------------------------------------- commands

%% Pop: the population, #{procs => tuple of the worker processes in spawn order,
%% rank => each column's position in that order (a binary of uint32, or identity),
%% k => columns per process}; undefined before spawn.
loop(Cfg, Pop) ->
    receive
        {command, Line} ->
            case string:lexemes(string:trim(Line), " ") of
                ["order_file", Path] when Pop =:= undefined -> put(order_file, Path), loop(Cfg, Pop);
                ["spawn"] when Pop =:= undefined -> loop(Cfg, spawn_all(Cfg));
                ["steps", K] when Pop =/= undefined ->
                    loop(Cfg, run_steps(Cfg, Pop, list_to_integer(K)));
                ["ids" | Ids] -> enqueue([list_to_integer(I) || I <- Ids]), loop(Cfg, Pop);
                ["ids_file", Path] -> enqueue_file(Path), loop(Cfg, Pop);
                ["memory"] -> emit(memory_report(Cfg, Pop)), loop(Cfg, Pop);
                ["allocators"] -> emit(allocator_report()), loop(Cfg, Pop);
                ["binaries"] -> emit(binary_probe()), loop(Cfg, Pop);
                ["where" | Ids] when Pop =/= undefined -> emit(where(Pop, Ids)), loop(Cfg, Pop);
                ["ping"] -> garbage_collect(), emit(#{event => pong}), loop(Cfg, Pop);
                ["quit"] -> halt(0);
                Other -> emit(#{event => error, message => iolist_to_binary(
                                  io_lib:format("unknown or out-of-order command ~p", [Other]))}),
                         loop(Cfg, Pop)
            end
    end.

%% ---------------------------------------------------------------- column state

%% A column's state is a few hundred bytes: two counters and a tuple of 8
%% boxed floats (1 + 3 + 9 + 8 * 3 = 37 words = 296 bytes).
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

reply(From, Id, T0) ->
    From ! {done, Id, erlang:monotonic_time(nanosecond) - T0}.

%% ---------------------------------------------------------------- techniques
%% One file each, beside this script (the allocator technique is VM flags only).

-include("technique_process.hrl").
-include("technique_spawn_order.hrl").
-include("technique_migrate_hot.hrl").
-include("technique_grouped.hrl").
-include("technique_state_off_heap.hrl").

%% ---------------------------------------------------------------- spawning

spawn_all(Cfg = #{n := N, group_size := K}) ->
    Before = erlang:memory(),
    SelfBefore = self_memory(),
    {Order, Rank} = spawn_order(Cfg),
    persistent_term:put({?MODULE, spawn_opts}, spawn_opts(Cfg)),
    T0 = erlang:monotonic_time(microsecond),
    Pop = #{procs => list_to_tuple(populate(Cfg, Order)), rank => Rank, k => K},
    garbage_collect(),
    settle(maps:get(procs, Pop)),
    T1 = erlang:monotonic_time(microsecond),
    After = erlang:memory(),
    emit(#{event => ready, n => N, processes => tuple_size(maps:get(procs, Pop)), spawn_ms => (T1 - T0) / 1000,
           memory_before => maps:from_list(Before), memory_after => maps:from_list(After),
           coordinator_memory_before => SelfBefore, coordinator_memory_after => self_memory()}),
    Pop.

%% The population's processes, in spawn order. The coordinator builds no per-column
%% table beyond that tuple: a column's process is found through its rank (its
%% position in the spawn order; see lookup/2), so the spawn leaves little garbage
%% on the coordinator's heap, whose freed carriers would stay resident and count
%% as the processes' RSS.
populate(Cfg = #{group_size := K, state_store := Store, n := N}, Order) when K > 1 ->
    Store =:= atomics andalso new_state_store(N),
    [spawn_opt(group_fun(Cfg, {G * K, columns(Order, G * K, min(K, N - G * K))}), spawn_opts(Cfg))
     || G <- lists:seq(0, (N - 1) div K)];
populate(Cfg = #{state_store := atomics, n := N, state_init := Init}, Order) ->
    new_state_store(N),
    Opts = spawn_opts(Cfg),
    in_order(Order, fun(I, Pos) -> spawn_opt(fun() -> offheap_init(Pos, initial_state(I, Init)),
                                                      erlang:hibernate(?MODULE, offheap_worker, [I, Pos]) end,
                                             Opts) end);
populate(Cfg = #{state_init := Init}, Order) ->
    Mode = mode(Cfg),
    Opts = spawn_opts(Cfg),
    in_order(Order, fun(I, _) -> spawn_opt(fun() -> idle(I, initial_state(I, Init), Mode) end, Opts) end).

%% F(Id, Position) for each column in spawn order (N: ids 0..N-1; a binary: its uint32 ids).
in_order(N, F) when is_integer(N) -> in_range(0, N, F, []);
in_order(Bin, F) -> in_binary(Bin, 0, F, []).

in_range(N, N, _, Acc) -> lists:reverse(Acc);
in_range(I, N, F, Acc) -> in_range(I + 1, N, F, [F(I, I) | Acc]).

in_binary(<<>>, _, _, Acc) -> lists:reverse(Acc);
in_binary(<<I:32/little, Rest/binary>>, Pos, F, Acc) -> in_binary(Rest, Pos + 1, F, [F(I, Pos) | Acc]).

%% The ids of the Len columns from position First in spawn order.
columns(N, First, Len) when is_integer(N) -> lists:seq(First, First + Len - 1);
columns(Bin, First, Len) -> [I || <<I:32/little>> <= binary:part(Bin, 4 * First, 4 * Len)].

%% The process holding column I, and I's slot in it (0 unless grouped).
lookup(Pop = #{procs := Procs, k := K}, I) ->
    R = position(Pop, I),
    {element(R div K + 1, Procs), R rem K}.

%% Column I's position in the spawn order.
position(#{rank := identity}, I) -> I;
position(#{rank := Rank}, I) -> Off = 4 * I, <<_:Off/binary, R:32/little, _/binary>> = Rank, R.

%% Wait until every worker has run its first reduction (built its state and,
%% with hibernate, hibernated), so "ready" means the population is idle.
settle(Procs) ->
    wait_idle(element(tuple_size(Procs), Procs)),
    wait_idle(element(1, Procs)).

wait_idle(Pid) ->
    case erlang:process_info(Pid, [status, current_function]) of
        [{status, waiting}, _] -> ok;
        _ -> timer:sleep(5), wait_idle(Pid)
    end.

self_memory() ->
    {memory, M} = erlang:process_info(self(), memory),
    M.

%% ---------------------------------------------------------------- activation

run_steps(Cfg = #{interval_ms := Interval, migrate_every := M}, Pop0, K) ->
    Start = erlang:monotonic_time(millisecond),
    Pop = lists:foldl(fun(S, Pop1) ->
                              Due = Start + S * Interval,
                              Now = erlang:monotonic_time(millisecond),
                              Due > Now andalso timer:sleep(Due - Now),
                              Step = next_step(),
                              Ids = one_step(Cfg, Pop1, Step),
                              case M > 0 of
                                  false -> Pop1;
                                  true ->
                                      put(hot, [Ids | case get(hot) of undefined -> []; H -> H end]),
                                      case (Step + 1) rem M of
                                          0 -> Hot = lists:usort(lists:append(get(hot))), erase(hot),
                                               migrate(Pop1, Step, Hot);
                                          _ -> Pop1
                                      end
                              end
                      end, Pop0, lists:seq(0, K - 1)),
    emit(#{event => steps_done, steps => K}),
    Pop.

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

%% A file of steps, each a little-endian uint32 count and that many uint32 ids:
%% kept as one binary (off the heap) and decoded a step at a time.
enqueue_file(Path) ->
    Bin = case file:read_file(Path) of {ok, B} -> B; {error, E} -> die(io_lib:format("cannot read ~s: ~p", [Path, E])) end,
    enqueue_steps(Bin).

enqueue_steps(<<>>) -> ok;
enqueue_steps(<<K:32/little, Ids:K/binary-unit:32, Rest/binary>>) -> enqueue(Ids), enqueue_steps(Rest);
enqueue_steps(_) -> die("ids_file: truncated step").

next_ids(Cfg = #{n := N, p := P}) ->
    case queue:out(case get(schedule) of undefined -> queue:new(); Q -> Q end) of
        {{value, Ids}, Rest} when is_binary(Ids) -> put(schedule, Rest), {harness, [I || <<I:32/little>> <= Ids]};
        {{value, Ids}, Rest} -> put(schedule, Rest), {harness, Ids};
        {empty, _} -> {vm, pick(Cfg, N, max(1, min(N, round(P * N))))}
    end.

one_step(Cfg = #{report_ids := ReportIds}, Pop, Step) ->
    {Source, Ids} = next_ids(Cfg),
    T0 = erlang:monotonic_time(nanosecond),
    Self = self(),
    lists:foreach(fun(I) -> {P, Slot} = lookup(Pop, I), P ! {act, I, Slot, Step, Self, T0} end, Ids),
    Lats = lists:sort(collect(length(Ids), [])),
    T1 = erlang:monotonic_time(nanosecond),
    Base = #{event => step, step => Step, activated => length(Ids), source => Source,
             elapsed_us => (T1 - T0) / 1000, lat_sample_ns => quantile_sample(Lats, 100)},
    Timed = case Lats of
                [] -> Base;  % an empty step (the harness's uniform can draw none)
                _ -> Base#{lat_p50_us => pct(Lats, 0.50) / 1000, lat_p99_us => pct(Lats, 0.99) / 1000,
                           lat_max_us => lists:last(Lats) / 1000}
            end,
    emit(case ReportIds of true -> Timed#{ids => lists:sort(Ids)}; false -> Timed end),
    Ids.

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

memory_report(#{n := N}, Pop) ->
    Procs = case Pop of undefined -> {}; #{procs := P} -> P end,
    {Sum, Heap, Hibernated} = fold_procs(
        fun(P, {S, H, Hb}) ->
                case erlang:process_info(P, [memory, total_heap_size, current_function]) of
                    [{memory, M}, {total_heap_size, T}, {current_function, F}] ->
                        {S + M, H + T, Hb + case F of {erlang, hibernate, 3} -> 1; _ -> 0 end};
                    undefined -> {S, H, Hb}
                end
        end, {0, 0, 0}, Procs),
    #{event => memory, memory => maps:from_list(erlang:memory()),
      workers => tuple_size(Procs), columns => N, workers_memory_sum => Sum,
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

%% The pid serial numbers of the processes holding the given columns: the VM
%% numbers processes in spawn order, so they show the order they were spawned in.
where(Pop, Ids) ->
    #{event => where, serials => [pid_serial(element(1, lookup(Pop, list_to_integer(I)))) || I <- Ids]}.

pid_serial(Pid) ->
    [_, Serial, _] = string:lexemes(pid_to_list(Pid), "<.>"),
    list_to_integer(Serial).

allocator_strategy(A) ->
    case erlang:system_info({allocator, A}) of
        [{instance, _, Info} | _] -> proplists:get_value(as, proplists:get_value(options, Info, []));
        _ -> undefined
    end.

%% F over the processes of a tuple, without a list of them.
fold_procs(F, Acc, Procs) -> fold_procs(F, Acc, Procs, 1).
fold_procs(_, Acc, Procs, I) when I > tuple_size(Procs) -> Acc;
fold_procs(F, Acc, Procs, I) -> fold_procs(F, F(element(I, Procs), Acc), Procs, I + 1).

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
