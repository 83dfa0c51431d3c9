%% scope_e2e: the workload of the end-to-end test (cmd/scope/beam_e2e_test.go).
%%
%% Run on node A with the environment:
%%   SCOPE_E2E_ENDPOINTS  comma-separated agent URLs
%%   SCOPE_E2E_PEER       node B (started with this module on its path)
%%   SCOPE_E2E_ROUNDS     rounds of the workload (default 3)
%%   SCOPE_E2E_PAUSE      "1": after the first round print "PAUSED" and
%%                        wait for a line on stdin before going on (the
%%                        test kills an agent meanwhile)
%% main/0 traces both nodes live with scope_tracer:start_cluster/2, runs
%% the workload, stops the tracers and prints "STATS <json>" with both
%% nodes' stats, then halts both nodes.
%%
%% The workload (every process below is traced; the module is call-traced):
%%   A: supervisor e2e_sup with gen_servers e2e_counter and e2e_crasher.
%%   B: supervisor e2e_sup with gen_server e2e_store.
%%   Per round, A's root process: calls and a cast to e2e_counter, a plain
%%   send to the name e2e_counter, a send to {e2e_store, B} answered by a
%%   send to its pid, a gen_server call to {e2e_store, B}, a ping by pid
%%   to the store answered by a pong, an exception raised five frames
%%   deep and caught, and a call that crashes e2e_crasher three frames
%%   deep (the supervisor restarts it).
-module(scope_e2e).
-behaviour(gen_server).

-export([main/0, b_setup/0, deep/1, explode/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

main() ->
    try run() of
        ok -> halt(0)
    catch
        C:R:St ->
            io:format("FAILED ~0tp~n", [{C, R, St}]),
            halt(1)
    end.

run() ->
    Eps = string:lexemes(os:getenv("SCOPE_E2E_ENDPOINTS"), ","),
    B = list_to_atom(os:getenv("SCOPE_E2E_PEER")),
    Rounds = list_to_integer(os:getenv("SCOPE_E2E_ROUNDS", "3")),
    Pause = os:getenv("SCOPE_E2E_PAUSE", "0") =:= "1",
    ok = wait_pong(B, 200),
    ok = rpc:call(B, ?MODULE, b_setup, []),
    Self = self(),
    Root = spawn(fun() -> root(Self, B, Rounds, Pause) end),
    true = register(e2e_root, Root),
    Opts = #{endpoint => Eps, procs => [e2e_root], modules => [?MODULE], batch => 50,
             flush_ms => 20, backoff_ms => 20, max_backoff_ms => 500, stop_timeout => 30000},
    Started = scope_tracer:start_cluster([node(), B], Opts),
    [{ok, _} = R || {_, R} <- Started],
    Root ! go,
    {e2e_root, B} ! go,
    ok = wait_root(Root, Pause),
    Stopped = scope_tracer:stop_cluster([node(), B]),
    Stats = [{N, S} || {N, {ok, S}} <- Stopped],
    2 = length(Stats),
    Json = scope_json:encode(maps:from_list([{atom_to_binary(N), printable(S)} || {N, S} <- Stats])),
    io:format("STATS ~s~n", [Json]),
    %% A call, not a cast: a cast can still be in flight when this node
    %% halts, and B would then never get it (seen: "B did not halt").
    %% B halts while answering, so the call ends with nodedown.
    _ = rpc:call(B, erlang, halt, [], 10000),
    ok.

wait_pong(_B, 0) -> error(peer_unreachable);
wait_pong(B, N) ->
    case net_adm:ping(B) of
        pong -> ok;
        pang -> timer:sleep(50), wait_pong(B, N - 1)
    end.

wait_root(Root, Pause) ->
    receive
        {Root, paused} when Pause ->
            io:format("PAUSED~n"),
            _ = io:get_line(""),
            Root ! resume,
            wait_root(Root, Pause);
        {Root, done} -> ok
    after 60000 -> error(workload_timeout)
    end.

printable(S) ->
    maps:map(fun(_, V) when is_integer(V) -> V;
                (_, V) when is_atom(V) -> atom_to_binary(V);
                (_, V) -> unicode:characters_to_binary(io_lib:format("~0tp", [V]))
             end, S).

%% b_setup/0 (on B, by rpc): a root process that starts B's supervisor
%% once told to (so that it is traced from its first event).
b_setup() ->
    Root = spawn(fun() ->
                         receive go -> ok end,
                         {ok, _} = supervisor:start_link({local, e2e_sup}, ?MODULE, {sup, b}),
                         receive stop -> ok end
                 end),
    true = register(e2e_root, Root),
    ok.

root(Main, B, Rounds, Pause) ->
    receive go -> ok end,
    process_flag(trap_exit, true),
    {ok, _} = supervisor:start_link({local, e2e_sup}, ?MODULE, {sup, a}),
    Store = wait_registered(B, e2e_store, 200),
    [begin
         round(B, Store, R),
         case Pause andalso R =:= 1 of
             true -> Main ! {self(), paused}, receive resume -> ok end;
             false -> ok
         end
     end || R <- lists:seq(1, Rounds)],
    Main ! {self(), done}.

wait_registered(_B, Name, 0) -> error({not_registered, Name});
wait_registered(B, Name, N) ->
    case rpc:call(B, erlang, whereis, [Name]) of
        P when is_pid(P) -> P;
        _ -> timer:sleep(20), wait_registered(B, Name, N - 1)
    end.

round(B, Store, R) ->
    {ok, _} = gen_server:call(e2e_counter, {add, R}),
    {ok, _} = gen_server:call(e2e_counter, {add, 2 * R}),
    ok = gen_server:cast(e2e_counter, {sub, 1}),
    e2e_counter ! {note, R},
    {e2e_store, B} ! {put, R, self()},
    receive {stored, R} -> ok after 5000 -> error(no_stored) end,
    {ok, R} = gen_server:call({e2e_store, B}, {get, R}),
    Store ! {ping, R, self()},
    receive {pong, R} -> ok after 5000 -> error(no_pong) end,
    {'EXIT', {{deep_bottom, 5}, _}} = (catch deep(5)),
    Crasher = whereis(e2e_crasher),
    {'EXIT', _} = (catch gen_server:call(e2e_crasher, crash)),
    wait_restart(Crasher, 250),
    ok.

wait_restart(_Old, 0) -> error(crasher_not_restarted);
wait_restart(Old, N) ->
    case whereis(e2e_crasher) of
        P when is_pid(P), P =/= Old -> ok;
        _ -> timer:sleep(10), wait_restart(Old, N - 1)
    end.

%% deep/1 raises at the bottom of N frames: an EXCEPTION per frame.
deep(0) -> error({deep_bottom, 5});
deep(N) -> 1 + deep(N - 1).

explode(0) -> error(crash_requested);
explode(N) -> {ok, explode(N - 1)}.

%% supervisor and gen_server callbacks
init({sup, a}) ->
    {ok, {#{strategy => one_for_one, intensity => 100, period => 1},
          [#{id => counter, start => {gen_server, start_link, [{local, e2e_counter}, ?MODULE, counter, []]}},
           #{id => crasher, start => {gen_server, start_link, [{local, e2e_crasher}, ?MODULE, crasher, []]}}]}};
init({sup, b}) ->
    {ok, {#{strategy => one_for_one, intensity => 100, period => 1},
          [#{id => store, start => {gen_server, start_link, [{local, e2e_store}, ?MODULE, store, []]}}]}};
init(counter) -> {ok, 0};
init(crasher) -> {ok, crasher};
init(store) -> {ok, #{}}.

handle_call({add, N}, _From, C) -> {reply, {ok, C + N}, C + N};
handle_call(crash, _From, S) -> {reply, explode(3), S};
handle_call({get, K}, _From, M) -> {reply, {ok, maps:get(K, M)}, M}.

handle_cast({sub, N}, C) -> {noreply, C - N}.

handle_info({note, _}, C) -> {noreply, C};
handle_info({put, K, From}, M) -> From ! {stored, K}, {noreply, M#{K => K}};
handle_info({ping, R, From}, M) -> From ! {pong, R}, {noreply, M}.
