%% Included by population.escript (one file per technique; see experiments/beam/README.md).

%% ---------------------------------------------------------------- technique: grouped
%% One process holds group_size columns (consecutive in the spawn order) as
%% one tuple of their states and updates it when any of them is activated:
%% "groups of columns as tensors in one process". With state_store=atomics
%% (grouped+state-off-heap) the group holds nothing: its columns' state is in
%% the atomics array, and the group only serialises their activations.

group_worker(States) ->
    receive
        {act, Id, Slot, Step, From, T0} ->
            States2 = setelement(Slot + 1, States, activate(element(Slot + 1, States), Step)),
            reply(From, Id, T0),
            group_worker(States2)
    end.

%% First: the slot of the group's first column (its position in the spawn order).
group_offheap_worker(First) ->
    receive
        {act, Id, Slot, Step, From, T0} ->
            offheap_activate(First + Slot, Step),
            reply(From, Id, T0),
            group_offheap_worker(First)
    end.

%% The spawn order cut into groups of K (the last may be shorter).
chunks([], _, Acc) -> lists:reverse(Acc);
chunks(L, K, Acc) -> {C, Rest} = take(L, K, []), chunks(Rest, K, [C | Acc]).

take([], _, Acc) -> {lists:reverse(Acc), []};
take(Rest, 0, Acc) -> {lists:reverse(Acc), Rest};
take([X | T], K, Acc) -> take(T, K - 1, [X | Acc]).

%% Each collects the garbage of building its columns' state before it waits: otherwise
%% the heap it grew for that (26 KB a group measured at 1M) stays with the idle group.
group_fun(#{state_store := atomics, state_init := Init}, {First, Chunk}) ->
    fun() ->
            lists:foldl(fun(I, Pos) -> offheap_init(Pos, initial_state(I, Init)), Pos + 1 end, First, Chunk),
            garbage_collect(),
            group_offheap_worker(First)
    end;
group_fun(#{state_init := Init}, {_, Chunk}) ->
    fun() ->
            States = list_to_tuple([initial_state(I, Init) || I <- Chunk]),
            garbage_collect(),
            group_worker(States)
    end.
