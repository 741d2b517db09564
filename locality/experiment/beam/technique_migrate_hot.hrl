%% Included by population.escript (one file per technique; see experiments/beam/README.md).

%% ---------------------------------------------------------------- technique: migrate-hot
%% Every migrate_every steps, each column activated since the last migration
%% re-creates itself: it spawns a successor holding its state (a fresh heap,
%% allocated now, next to the other hot ones) and hands over its entry in the
%% coordinator's table; then it ends. The VM analogue of `compacting`.

migrate_self(Id, State, Mode, From) ->
    Opts = persistent_term:get({?MODULE, spawn_opts}),
    New = spawn_opt(fun() -> idle(Id, State, Mode) end, Opts),
    From ! {migrated, Id, New}.

migrate(Pop = #{procs := Procs}, Step, Hot) ->
    T0 = erlang:monotonic_time(microsecond),
    lists:foreach(fun(I) -> element(1, lookup(Pop, I)) ! {migrate, self()} end, Hot),
    Moved = lists:keysort(1, [receive {migrated, I, P} -> {position(Pop, I), P} end || _ <- Hot]),
    Procs2 = replace(tuple_to_list(Procs), 0, Moved, []),
    garbage_collect(),
    T1 = erlang:monotonic_time(microsecond),
    emit(#{event => migrate, step => Step, migrated => length(Moved), elapsed_us => T1 - T0}),
    Pop#{procs := Procs2}.

replace(Rest, _, [], Acc) -> list_to_tuple(lists:reverse(Acc, Rest));
replace([_ | T], I, [{I, P} | U], Acc) -> replace(T, I + 1, U, [P | Acc]);
replace([X | T], I, U, Acc) -> replace(T, I + 1, U, [X | Acc]).
