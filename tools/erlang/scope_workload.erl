%% scope_workload: a small, realistic OTP workload for capturing Scope
%% fixtures with the Scope client's offline mode (see capture.escript and README.md).
%%
%% run/1, in the calling process (the "supervisor"):
%%   - starts scope_kv, a gen_server registered under a name (calls, casts,
%%     and plain sends to the name handled by handle_info);
%%   - starts scope_echo, a registered plain-receive process that answers
%%     every {ping, From} with pong (identical messages, FIFO);
%%   - spawn_links Workers workers while trapping exits, and collects their
%%     exits. Worker 2 exits abnormally from nested calls (exit/1); worker 3
%%     blocks in a nested receive and is killed with its frames open; the
%%     others finish normally. A message is sent to the crashed worker
%%     afterwards (a send to a dead pid).
%% Each worker, per round: a call and a cast to scope_kv, `scope_kv ! Msg`
%% and `{scope_kv, node()} ! Msg`, a recursion Depth deep that returns, a
%% recursion Depth deep that raises at the bottom and is caught two frames
%% above the recursion, Pings identical pings to scope_echo by pid and the
%% same number of identical pongs received.
-module(scope_workload).
-behaviour(gen_server).

-export([run/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

run(#{workers := Workers, rounds := Rounds, depth := Depth, pings := Pings}) ->
    process_flag(trap_exit, true),
    {ok, Kv} = gen_server:start_link({local, scope_kv}, ?MODULE, #{}, []),
    Echo = spawn_link(fun echo_loop/0),
    true = register(scope_echo, Echo),
    Self = self(),
    Ws = [{I, spawn_link(fun() -> worker(Self, I, Rounds, Depth, Pings) end)} || I <- lists:seq(1, Workers)],
    Exits = collect(Ws, []),
    [W ! {late, I} || {I, W} <- Ws, I =:= 2],
    Echo ! stop,
    {'EXIT', Echo, normal} = receive {'EXIT', Echo, _} = E -> E end,
    ok = gen_server:stop(Kv),
    lists:sort(Exits).

%% collect/2 waits for every worker; the hanging worker (3) is killed once
%% it has reported that it is blocked.
collect([], Acc) ->
    Acc;
collect(Ws, Acc) ->
    receive
        {blocked, W} ->
            exit(W, kill),
            collect(Ws, Acc);
        {'EXIT', W, Reason} ->
            case lists:keytake(W, 2, Ws) of
                {value, {I, W}, Rest} -> collect(Rest, [{I, Reason} | Acc]);
                false -> collect(Ws, Acc)
            end
    end.

worker(Sup, I, Rounds, Depth, Pings) ->
    [round(I, R, Depth, Pings) || R <- lists:seq(1, Rounds)],
    finish(Sup, I).

finish(_Sup, 2) ->
    explode(3);
finish(Sup, 3) ->
    Sup ! {blocked, self()},
    block(3);
finish(_Sup, _I) ->
    done.

explode(0) -> exit({crashed, self()});
explode(N) -> [N | explode(N - 1)].

block(0) -> receive never_sent -> ok end;
block(N) -> [N | block(N - 1)].

round(I, R, Depth, Pings) ->
    ok = gen_server:call(scope_kv, {put, {I, R}, I * R}),
    ok = gen_server:cast(scope_kv, {incr, I}),
    scope_kv ! {note, I, R},
    {scope_kv, node()} ! {note, I, -R},
    Depth = descend(Depth),
    {caught, Depth} = guarded(Depth),
    ping(whereis(scope_echo), Pings),
    {ok, _} = gen_server:call(scope_kv, {get, {I, R}}).

descend(0) -> 0;
descend(N) -> 1 + descend(N - 1).

guarded(Depth) ->
    try attempt(Depth)
    catch error:{too_deep, Depth} -> {caught, Depth}
    end.

attempt(Depth) -> {unreachable, descend_fail(Depth, Depth)}.

descend_fail(0, Depth) -> erlang:error({too_deep, Depth});
descend_fail(N, Depth) -> 1 + descend_fail(N - 1, Depth).

ping(Echo, N) ->
    [Echo ! {ping, self()} || _ <- lists:seq(1, N)],
    [receive pong -> ok end || _ <- lists:seq(1, N)],
    ok.

%% echo_loop/0 is a traced tail-recursive loop: under return_trace each
%% iteration keeps a frame, as it would in any captured application.
echo_loop() ->
    receive
        {ping, From} -> From ! pong, echo_loop();
        stop -> stopped
    end.

init(State) -> {ok, State#{kv => #{}, counts => #{}, notes => 0}}.

handle_call({put, K, V}, _From, #{kv := Kv} = S) -> {reply, ok, S#{kv := Kv#{K => V}}};
handle_call({get, K}, _From, #{kv := Kv} = S) -> {reply, maps:find(K, Kv), S}.

handle_cast({incr, I}, #{counts := C} = S) -> {noreply, S#{counts := C#{I => maps:get(I, C, 0) + 1}}}.

handle_info({note, _I, _R}, #{notes := N} = S) -> {noreply, S#{notes := N + 1}};
handle_info(_Other, S) -> {noreply, S}.

terminate(_Reason, _S) -> ok.
