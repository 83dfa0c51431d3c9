-module(scope_buf_tests).
-include_lib("eunit/include/eunit.hrl").

fill(B, L) -> lists:foldl(fun scope_buf:push/2, B, L).

fifo_test() ->
    B = fill(scope_buf:new(10), [1, 2, 3, 4]),
    {Out, B1} = scope_buf:take(3, B),
    ?assertEqual([1, 2, 3], Out),
    ?assertEqual(1, scope_buf:len(B1)),
    {Out2, B2} = scope_buf:take(5, B1),
    ?assertEqual([4], Out2),
    ?assertEqual(0, scope_buf:len(B2)),
    ?assertEqual(0, scope_buf:dropped(B2)).

drop_oldest_test() ->
    B = fill(scope_buf:new(3), lists:seq(1, 7)),
    ?assertEqual(3, scope_buf:len(B)),
    ?assertEqual(4, scope_buf:dropped(B)),
    ?assertMatch({[5, 6, 7], _}, scope_buf:take(10, B)).

%% Every pushed item is taken exactly once or counted dropped.
accounting_test() ->
    rand:seed(exsss, {1, 2, 3}),
    {Taken, B} = lists:foldl(
                   fun(I, {T, Bu}) ->
                           Bu1 = scope_buf:push(I, Bu),
                           case rand:uniform(4) of
                               1 -> {Out, Bu2} = scope_buf:take(rand:uniform(5), Bu1), {T ++ Out, Bu2};
                               _ -> {T, Bu1}
                           end
                   end, {[], scope_buf:new(8)}, lists:seq(1, 2000)),
    {Rest, B1} = scope_buf:take(100, B),
    All = Taken ++ Rest,
    ?assertEqual(All, lists:sort(All)),
    ?assertEqual(2000, length(All) + scope_buf:dropped(B1)).
