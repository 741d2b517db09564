%% Included by population.escript (one file per technique; see experiments/beam/README.md).

%% ---------------------------------------------------------------- technique: state-off-heap
%% Column state in one atomics array, 10 signed 64-bit words per column
%% (count, last step, the 8 floats in fixed point, 1e-6), reached through
%% persistent_term; each process holds only its id and its slot, and waits
%% hibernated. A column's slot is its position in the spawn order (its id
%% unless spawn-order), so the state of columns spawned together is adjacent.

-define(FIX, 1000000).

offheap_init(Pos, State) ->
    {Count, Last, W} = State,
    A = persistent_term:get({?MODULE, atomics}),
    Base = 10 * Pos,
    atomics:put(A, Base + 1, Count),
    atomics:put(A, Base + 2, Last),
    lists:foreach(fun(I) -> atomics:put(A, Base + 2 + I, round(element(I, W) * ?FIX)) end, lists:seq(1, 8)).

new_state_store(N) ->
    persistent_term:put({?MODULE, atomics}, atomics:new(10 * N, [{signed, true}])).

offheap_worker(Id, Pos) ->
    receive
        {act, _Id, _Slot, Step, From, T0} ->
            offheap_activate(Pos, Step),
            reply(From, Id, T0),
            erlang:hibernate(?MODULE, offheap_worker, [Id, Pos])
    end.

offheap_activate(Pos, Step) ->
    A = persistent_term:get({?MODULE, atomics}),
    Base = 10 * Pos,
    atomics:add(A, Base + 1, 1),
    atomics:put(A, Base + 2, Step),
    offheap_update(A, Base + 3, Base + 10).

%% X * 0.99 + 0.01, in fixed point.
offheap_update(_, I, Last) when I > Last -> ok;
offheap_update(A, I, Last) ->
    atomics:put(A, I, (atomics:get(A, I) * 99) div 100 + ?FIX div 100),
    offheap_update(A, I + 1, Last).
