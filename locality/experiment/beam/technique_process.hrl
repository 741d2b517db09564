%% Included by population.escript (one file per technique; see experiments/beam/README.md).

%% ---------------------------------------------------------------- technique: one process per column
%% (default; hibernate: idle processes wait in erlang:hibernate/3, heap
%% compacted to the live state, stack dropped; heap-tuned: the spawn options
%% below plus gc_after, a garbage collection after every activation.)
%% Mode: plain | hibernate | gc.

worker(Id, State, Mode) ->
    receive
        {act, _Id, _Slot, Step, From, T0} ->
            State2 = activate(State, Step),
            reply(From, Id, T0),
            Mode =:= gc andalso garbage_collect(),
            idle(Id, State2, Mode);
        {migrate, From} ->
            migrate_self(Id, State, Mode, From)
    end.

idle(Id, State, hibernate) -> erlang:hibernate(?MODULE, worker, [Id, State, hibernate]);
idle(Id, State, Mode) -> worker(Id, State, Mode).

mode(#{hibernate := true}) -> hibernate;
mode(#{gc_after := true}) -> gc;
mode(_) -> plain.

%% min_heap_size (heap-tuned lowers the VM's floor with +hms) and fullsweep_after.
spawn_opts(#{min_heap_size := Mhs, fullsweep_after := Fs}) ->
    [{min_heap_size, Mhs} || Mhs > 0] ++ [{fullsweep_after, Fs} || Fs >= 0].
