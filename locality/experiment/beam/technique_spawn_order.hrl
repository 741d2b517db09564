%% Included by population.escript (one file per technique; see experiments/beam/README.md).

%% ---------------------------------------------------------------- technique: spawn-order
%% With order=true the columns are spawned in the order locality wrote to
%% the file named by `order_file PATH` (n little-endian uint32: the Hilbert
%% order of the sheet, as the Python `clustered` layout; then n more: each
%% column's position in that order, which lookup/2 uses), so
%% neighbours' heaps and process structs are allocated one after the other.
%% Their ids stay the same: only where they live changes. A file, read inside
%% the spawn, rather than command lines: parsing megabytes of text would leave
%% freed-but-resident memory behind that the spawn then reuses, hiding its cost.

spawn_order(#{order := true, n := N}) ->
    Path = case get(order_file) of undefined -> die("order=true needs an order_file command before spawn");
                                   P -> P end,
    Bin = case file:read_file(Path) of {ok, B} -> B; {error, E} -> die(io_lib:format("cannot read ~s: ~p", [Path, E])) end,
    byte_size(Bin) =:= 8 * N orelse die(io_lib:format("~s holds ~b bytes, not 8 n = ~b", [Path, byte_size(Bin), 8 * N])),
    %% The order (ids in spawn order), then the rank (each id's position in it).
    <<Order:(4 * N)/binary, Rank:(4 * N)/binary>> = Bin,
    {Order, binary:copy(Rank)};
spawn_order(#{n := N}) -> {N, identity}.
