%% Included by population.escript (one file per technique; see experiments/beam/README.md).

%% ---------------------------------------------------------------- technique: grouped
%% One process holds group_size columns (consecutive in the spawn order) as
%% one tuple of their states and updates it when any of them is activated:
%% "groups of columns as tensors in one process".

group_worker(States) ->
    receive
        {act, Id, Slot, Step, From, T0} ->
            States2 = setelement(Slot + 1, States, activate(element(Slot + 1, States), Step)),
            reply(From, Id, T0),
            group_worker(States2)
    end.

chunks([], _, Acc) -> lists:reverse(Acc);
chunks(L, K, Acc) when length(L) =< K -> lists:reverse([L | Acc]);
chunks(L, K, Acc) -> {C, Rest} = lists:split(K, L), chunks(Rest, K, [C | Acc]).
