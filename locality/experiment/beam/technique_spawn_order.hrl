%% Included by population.escript (one file per technique; see experiments/beam/README.md).

%% ---------------------------------------------------------------- technique: spawn-order
%% With order=true the columns are spawned in the order locality sent
%% (`order` lines: the Hilbert order of the sheet, as the Python `clustered`
%% layout), so neighbours' heaps and process structs are allocated one after
%% the other. Their ids stay the same: only where they live changes.

append_order(Ids) ->
    put(order, [lists:reverse(Ids) | case get(order) of undefined -> []; L -> L end]).

spawn_order(#{order := true, n := N}) ->
    Order = lists:reverse(lists:append(case get(order) of undefined -> []; L -> L end)),
    erase(order),
    length(Order) =:= N orelse die(io_lib:format("order has ~b ids, not n = ~b", [length(Order), N])),
    lists:sort(Order) =:= lists:seq(0, N - 1) orelse die("order is not a permutation of 0..n-1"),
    Order;
spawn_order(#{n := N}) -> lists:seq(0, N - 1).
